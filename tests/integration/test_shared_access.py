"""Authorization does not travel with content: a private image one cluster wrote to
the shared bucket is served by another cluster only under a repository its upstream
vouches for (cacheproxy/links.py), with the bucket read or redirected to only then.

The private/public upstream setup is the one of ``test_who_reads_what``: the
private registry takes the proxy's own login; alice may pull both, anonymous
clients only the public upstream.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import aiohttp
import pytest

from cacheproxy.http.keys import SHARED, WRITEBACK
from tests.integration.test_who_reads_what import (
    PUBLIC,
    Upstreams,
    alice_pulls,
    answer,
    push_private,
    upstreams,  # noqa: F401 (a fixture)
    write_config,
)
from tests.support.forwarder import Forwarder
from tests.support.images import push_image
from tests.support.proxy import running_proxy
from tests.support.s3 import PREFIX, MotoS3, object_key, shared_table

# Every proxy here talks to moto's S3 with the keys it accepts.
pytestmark = pytest.mark.usefixtures("aws_env")


@pytest.mark.parametrize("redirect", [False, True], ids=["read", "redirect"])
async def test_a_private_image_in_the_bucket_stays_private(
    upstreams: Upstreams,  # noqa: F811
    moto: MotoS3,
    tmp_path: Path,
    redirect: bool,
) -> None:
    secret = await push_private(upstreams, f"team/secret-{uuid.uuid4().hex[:6]}", (300_000,))
    public_repo = f"lib/app-{uuid.uuid4().hex[:6]}"
    await push_image(upstreams.public.url, public_repo, "v1", layer_sizes=(2000,))
    bucket = moto.new_bucket()
    async with Forwarder(moto.url) as wire:
        table = shared_table(wire.url, bucket, redirect=redirect)
        config = write_config(tmp_path, upstreams, table)
        # One cluster: alice pulls the private image, and it is written back.
        async with running_proxy(None, tmp_path / "a", config_file=config) as a:
            await alice_pulls(a.url, secret)
            async with asyncio.timeout(60):
                await a.app[WRITEBACK].drained()
        private_keys = [object_key(d) for d in [secret.digest, *(b.digest for b in secret.blobs)]]
        assert set(private_keys) <= set(moto.keys(bucket, PREFIX))

        # Another cluster, same bucket, never saw the image.
        async with running_proxy(None, tmp_path / "b", config_file=config) as b:
            reads = sum(wire.count("GET", key) for key in private_keys)
            async with aiohttp.ClientSession() as http:
                for blob in secret.blobs:
                    for method in ("GET", "HEAD"):
                        by_prefix = f"{b.url}/v2/{PUBLIC}/{public_repo}/blobs/{blob.digest}"
                        by_ns = f"{b.url}/v2/{public_repo}/blobs/{blob.digest}?ns={PUBLIC}"
                        for target in (by_prefix, by_ns):
                            status, code = await answer(http, method, target)
                            assert status == 404, (method, target, status)
                            assert code in ("BLOB_UNKNOWN", "(HEAD)")
                manifest = f"{b.url}/v2/{PUBLIC}/{public_repo}/manifests/{secret.digest}"
                assert await answer(http, "GET", manifest) == (404, "MANIFEST_UNKNOWN")
            # The bucket was never read for them, nor was anyone sent to it.
            assert sum(wire.count("GET", key) for key in private_keys) == reads
            assert b.app[SHARED].stats.redirects == 0

            # alice, under the private repository itself: from the bucket (or sent
            # there), not one blob byte from the upstream.
            before = upstreams.private.body_bytes("GET", "/blobs/")
            await alice_pulls(b.url, secret)
            assert upstreams.private.body_bytes("GET", "/blobs/") == before
            # Read through a fill the first time (verified: this node has not seen the
            # objects match their digests); in redirect mode, sent there afterwards.
            assert b.fills.stats.shared_gets == len(secret.blobs)
            if redirect:
                assert b.app[SHARED].stats.redirects == 0
                await alice_pulls(b.url, secret)
                assert b.app[SHARED].stats.redirects == len(secret.blobs)
