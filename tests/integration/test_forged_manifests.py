"""A manifest is not a permission slip: what a manifest names is never served under
its repository on the strength of the manifest alone.

Anyone who may push somewhere can write a manifest, and a registry stores a
``subject`` (distribution-spec 1.1: it MUST accept one that does not exist), a
``blobs`` list and a foreign layer's ``urls`` unchecked; distribution 2.8, the real
upstream here, stores all three. Each test is an attack from outside: after alice
pulled a private image, a client who may not pull it pushes, to a repository of its
own, a valid image whose extra fields name the private digests, pulls that manifest
through the proxy, and asks for the private content under its own repository: on
the same node, on another node of a cluster, from the shared bucket on a cluster
that never held it (read or redirected), offline, and after an import of a bundle
naming digests it does not carry.

The private/public upstream setup is the one of ``test_who_reads_what``: the
private registry takes the proxy's own login; alice may pull both, anonymous
clients only the public upstream.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import sys
import tarfile
import uuid
from pathlib import Path

import aiohttp
import pytest

from cacheproxy.http.keys import SHARED, WRITEBACK
from cacheproxy.links import LINKS_MARKER
from cacheproxy.store.index import Index
from tests.integration.test_who_reads_what import (
    ACCEPT,
    ALICE,
    PRIVATE,
    PUBLIC,
    Upstreams,
    alice_pulls,
    answer,
    cluster,
    push_private,
    upstreams,  # noqa: F401 (a fixture)
    write_config,
)
from tests.support.clients import run_process, skopeo
from tests.support.forwarder import Fault, Forwarder
from tests.support.images import (
    OCI_INDEX,
    OCI_MANIFEST,
    PushedImage,
    basic_auth,
    push_blob,
    push_image,
    push_manifest,
    sha256_digest,
)
from tests.support.proxy import running_proxy
from tests.support.registry import write_htpasswd
from tests.support.s3 import MotoS3, shared_table
from tests.support.waiting import eventually

NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"


def forge(image: PushedImage, named: list[tuple[str, str, int]], how: str) -> bytes:
    """``image``'s manifest with ``named`` (digest, media type, size) descriptors added
    where a registry does not check them: as the ``subject``, in a ``blobs`` list, or
    as foreign layers (``urls``)."""
    doc = json.loads(image.manifest)
    descriptors = [{"mediaType": t, "digest": d, "size": s} for d, t, s in named]
    if how == "subject":
        doc["subject"] = descriptors[0]
    elif how == "blobs":
        doc["blobs"] = descriptors
    elif how == "foreign":
        for desc in descriptors:
            desc["mediaType"] = NONDISTRIBUTABLE
            desc["urls"] = ["https://example.com/layer.tar.gz"]
        doc["layers"] = [*doc["layers"], *descriptors]
    else:
        raise ValueError(how)
    return json.dumps(doc).encode()


async def push_forged(
    url: str,
    repo: str,
    secret: PushedImage,
    how: str,
    headers: dict[str, str] | None = None,
    manifest: bool = False,
) -> str:
    """Push to ``repo`` a valid image of the attacker's whose ``how`` names the secret
    image's blobs (or its manifest); returns the tag."""
    own = await push_image(url, repo, "own", layer_sizes=(1500,), headers=headers, seed=repo + how)
    if manifest:
        named = [(secret.digest, secret.media_type, len(secret.manifest))]
    else:
        named = [(b.digest, b.media_type, b.size) for b in reversed(secret.blobs)]
    tag = f"forged-{how}"
    await push_manifest(url, repo, tag, forge(own, named, how), OCI_MANIFEST, headers=headers)
    return tag


async def pull_manifest(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> None:
    async with http.get(url, headers={**ACCEPT, **headers}) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()


async def refused_everywhere(
    http: aiohttp.ClientSession, node: str, repo: str, secret: PushedImage
) -> None:
    """Every secret digest under the attacker's repository: 404, by prefix and ns=."""
    for blob in secret.blobs:
        for method in ("GET", "HEAD"):
            for target in (
                f"{node}/v2/{PUBLIC}/{repo}/blobs/{blob.digest}",
                f"{node}/v2/{repo}/blobs/{blob.digest}?ns={PUBLIC}",
            ):
                status, code = await answer(http, method, target)
                assert status == 404, (method, target, status)
                assert code in ("BLOB_UNKNOWN", "(HEAD)")
    manifest = f"{node}/v2/{PUBLIC}/{repo}/manifests/{secret.digest}"
    assert await answer(http, "GET", manifest) == (404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize(
    ("how", "manifest"),
    [("subject", False), ("blobs", False), ("subject", True)],
    ids=["subject-blobs", "blobs-list", "subject-manifest"],
)
async def test_a_manifest_naming_private_content_grants_nothing(
    upstreams: Upstreams,  # noqa: F811
    tmp_path: Path,
    how: str,
    manifest: bool,
) -> None:
    """The forged manifest names the private blobs (or the private image's manifest):
    none of them, nor what the private manifest references, is served under the
    attacker's repository, and stock skopeo cannot copy the private image from there."""
    secret = await push_private(upstreams, f"team/secret-{uuid.uuid4().hex[:6]}")
    repo = f"mallory/own-{uuid.uuid4().hex[:6]}"
    tag = await push_forged(upstreams.public.url, repo, secret, how, manifest=manifest)
    config = write_config(tmp_path, upstreams)
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config) as proxy,
        aiohttp.ClientSession() as http,
    ):
        await alice_pulls(proxy.url, secret)
        # Anonymous: the forged manifest pulls (it is a valid image of its own) ...
        await pull_manifest(http, f"{proxy.url}/v2/{PUBLIC}/{repo}/manifests/{tag}", {})
        # ... and names nothing it may then read; twice: asking again links nothing.
        await refused_everywhere(http, proxy.url, repo, secret)
        await refused_everywhere(http, proxy.url, repo, secret)
        ref = f"docker://{proxy.host}/{PUBLIC}/{repo}@{secret.digest}"
        result = await skopeo("copy", "--src-tls-verify=false", ref, f"dir:{tmp_path / 'x'}")
        assert result.returncode != 0
        assert not (tmp_path / "x" / "manifest.json").exists()


@pytest.mark.parametrize("how", ["subject", "blobs", "foreign"])
async def test_a_restricted_user_cannot_read_through_a_repository_they_push_to(
    upstreams: Upstreams,  # noqa: F811
    tmp_path: Path,
    how: str,
) -> None:
    """On the private registry itself: bob may pull team/* but not secret/*; a
    manifest in team/ naming secret/app's blobs (pushed there with the registry's
    login, as bob's own push rights would; this registry accepts foreign layers)
    reads nothing of them."""
    suffix = uuid.uuid4().hex[:6]
    secret = await push_private(upstreams, f"secret/app-{suffix}")
    own = f"team/own-tool-{suffix}"
    robot = basic_auth("robot", "robot-upstream-password-1")
    tag = await push_forged(upstreams.private.url, own, secret, how, headers=robot)
    config = write_config(tmp_path, upstreams)
    htpasswd = tmp_path / "htpasswd"
    write_htpasswd(htpasswd, *ALICE)
    with htpasswd.open("a") as out:
        write_htpasswd(tmp_path / "bob", "bob", "bob-proxy-password-1")
        out.write((tmp_path / "bob").read_text())
    text = config.read_text().replace(
        '[[access]]\nsubjects = ["anonymous"]',
        f'[[access]]\nsubjects = ["bob"]\nallow = ["{PRIVATE}/team/*"]\n'
        '[[access]]\nsubjects = ["anonymous"]',
    )
    config.write_text(text)
    bob = basic_auth("bob", "bob-proxy-password-1")
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config) as proxy,
        aiohttp.ClientSession() as http,
    ):
        await alice_pulls(proxy.url, secret)
        denied = f"{proxy.url}/v2/{PRIVATE}/{secret.name}/blobs/{secret.layers[0].digest}"
        async with http.get(denied, headers=bob) as resp:
            assert resp.status == 403
        await pull_manifest(http, f"{proxy.url}/v2/{PRIVATE}/{own}/manifests/{tag}", bob)
        for blob in secret.blobs:
            for method in ("GET", "HEAD"):
                url = f"{proxy.url}/v2/{PRIVATE}/{own}/blobs/{blob.digest}"
                async with http.request(method, url, headers=bob) as resp:
                    assert resp.status == 404, (method, blob.digest)


async def test_the_forged_manifest_grants_nothing_on_another_node(
    upstreams: Upstreams,  # noqa: F811
    tmp_path: Path,
) -> None:
    secret = await push_private(upstreams, f"team/secret-{uuid.uuid4().hex[:6]}")
    repo = f"mallory/own-{uuid.uuid4().hex[:6]}"
    tag = await push_forged(upstreams.public.url, repo, secret, "subject")
    manifest_tag = await push_forged(upstreams.public.url, repo, secret, "blobs")
    config = write_config(tmp_path, upstreams)
    async with cluster(tmp_path, config, 2) as nodes, aiohttp.ClientSession() as http:
        (_, first), (_, second) = nodes
        await alice_pulls(first, secret)
        for node in (first, second):
            for forged in (tag, manifest_tag):
                await pull_manifest(http, f"{node}/v2/{PUBLIC}/{repo}/manifests/{forged}", {})
        for node in (first, second):
            await refused_everywhere(http, node, repo, secret)


@pytest.mark.parametrize("redirect", [False, True], ids=["read", "redirect"])
async def test_the_forged_manifest_grants_nothing_from_the_bucket(
    upstreams: Upstreams,  # noqa: F811
    moto: MotoS3,
    aws_env: None,
    tmp_path: Path,
    redirect: bool,
) -> None:
    """A second cluster that never held the private image, sharing the bucket the
    first wrote it to: the forged manifest reads nothing from the bucket, and sends
    nobody there."""
    secret = await push_private(upstreams, f"team/secret-{uuid.uuid4().hex[:6]}", (300_000,))
    repo = f"mallory/own-{uuid.uuid4().hex[:6]}"
    tag = await push_forged(upstreams.public.url, repo, secret, "subject")
    bucket = moto.new_bucket()
    async with Forwarder(moto.url) as wire:
        config = write_config(
            tmp_path, upstreams, shared_table(wire.url, bucket, redirect=redirect)
        )
        async with running_proxy(None, tmp_path / "a", config_file=config) as a:
            await alice_pulls(a.url, secret)
            async with asyncio.timeout(60):
                await a.app[WRITEBACK].drained()
        async with (
            running_proxy(None, tmp_path / "b", config_file=config) as b,
            aiohttp.ClientSession() as http,
        ):
            keys = [secret.digest.split(":")[1], *(b.digest.split(":")[1] for b in secret.blobs)]
            reads = [wire.count("GET", key) for key in keys]
            await pull_manifest(http, f"{b.url}/v2/{PUBLIC}/{repo}/manifests/{tag}", {})
            await refused_everywhere(http, b.url, repo, secret)
            # The bucket was never read for the secret, nor was anyone sent to it.
            assert [wire.count("GET", key) for key in keys] == reads
            assert b.app[SHARED].stats.redirects == 0


async def test_the_forged_manifest_grants_nothing_offline(
    upstreams: Upstreams,  # noqa: F811
    tmp_path: Path,
) -> None:
    secret = await push_private(upstreams, f"team/secret-{uuid.uuid4().hex[:6]}")
    repo = f"mallory/own-{uuid.uuid4().hex[:6]}"
    tag = await push_forged(upstreams.public.url, repo, secret, "subject")
    config = write_config(tmp_path, upstreams)
    cache = tmp_path / "cache"
    async with (
        running_proxy(None, cache, config_file=config) as proxy,
        aiohttp.ClientSession() as http,
    ):
        await alice_pulls(proxy.url, secret)
        await pull_manifest(http, f"{proxy.url}/v2/{PUBLIC}/{repo}/manifests/{tag}", {})
    async with (
        running_proxy(None, cache, config_file=config, offline=True) as proxy,
        aiohttp.ClientSession() as http,
    ):
        # The forged manifest is served (it was fetched there), and nothing it names.
        await pull_manifest(http, f"{proxy.url}/v2/{PUBLIC}/{repo}/manifests/{tag}", {})
        await refused_everywhere(http, proxy.url, repo, secret)
        await alice_pulls(proxy.url, secret)


# --- import ------------------------------------------------------------------------


def bundle(path: Path, image: PushedImage, repo: str, extra: dict[str, bytes]) -> None:
    """An OCI layout tar carrying ``image`` (manifest, config, layers) plus ``extra``
    members (digest -> bytes), tagged as ``PUBLIC/repo:v1``."""
    members = {image.digest: image.manifest, **image.blob_data, **extra}
    layout = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": image.media_type,
                "digest": image.digest,
                "size": len(image.manifest),
                "annotations": {
                    "io.cacheproxy.upstream": PUBLIC,
                    "io.cacheproxy.repository": repo,
                    "io.cacheproxy.tag": "v1",
                },
            }
        ],
    }
    with tarfile.open(path, "w") as tar:
        for name, data in [
            ("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'),
            *((f"blobs/sha256/{d.split(':')[1]}", b) for d, b in members.items()),
            ("index.json", json.dumps(layout).encode()),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


async def cacheproxy(*args: str) -> tuple[int, str]:
    result = await run_process(sys.executable, "-m", "cacheproxy", *args, timeout=120)
    return result.returncode, result.stderr


def rewritten(image: PushedImage, doc: dict[str, object]) -> PushedImage:
    """``image`` with its manifest replaced by ``doc`` (same blobs)."""
    body = json.dumps(doc).encode()
    return PushedImage(
        image.name, "v1", sha256_digest(body), OCI_MANIFEST, body, blob_data=image.blob_data
    )


async def test_an_import_links_only_what_the_bundle_carries(
    upstreams: Upstreams,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Bundles naming private digests the cache holds: one whose manifest lists a
    private layer it does not carry is refused; one carrying a member under a
    private digest with other bytes is refused; one whose subject names the private
    layer imports, and the layer stays unserved under the bundle's repository."""
    secret = await push_private(upstreams, f"team/secret-{uuid.uuid4().hex[:6]}")
    layer = secret.layers[0]
    repo = f"mallory/own-{uuid.uuid4().hex[:6]}"
    own = await push_image(upstreams.public.url, repo, "v1", layer_sizes=(1500,))
    config = write_config(tmp_path, upstreams)
    cache = tmp_path / "cache"
    async with running_proxy(None, cache, config_file=config) as proxy:
        await alice_pulls(proxy.url, secret)
    base = ["--config", str(config), "--cache-dir", str(cache)]

    layered = json.loads(own.manifest)
    layered["layers"].append(
        {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
    )
    lying = rewritten(own, layered)
    bundle(tmp_path / "missing.tar", lying, repo, {})
    code, err = await cacheproxy("import", *base, str(tmp_path / "missing.tar"))
    assert code != 0 and "not in the bundle" in err, err

    bundle(tmp_path / "fake.tar", lying, repo, {layer.digest: b"not the private layer"})
    code, err = await cacheproxy("import", *base, str(tmp_path / "fake.tar"))
    assert code != 0 and "does not match its digest" in err, err

    subject = json.loads(own.manifest)
    subject["subject"] = {"mediaType": layer.media_type, "digest": layer.digest, "size": 1}
    named = rewritten(own, subject)
    bundle(tmp_path / "subject.tar", named, repo, {})
    code, err = await cacheproxy("import", *base, str(tmp_path / "subject.tar"))
    assert code == 0, err
    async with (
        running_proxy(None, cache, config_file=config, offline=True) as proxy,
        aiohttp.ClientSession() as http,
    ):
        await pull_manifest(http, f"{proxy.url}/v2/{PUBLIC}/{repo}/manifests/v1", {})
        await refused_everywhere(http, proxy.url, repo, secret)
        # What the bundle carried is served under its repository.
        for digest in own.blob_data:
            async with http.get(f"{proxy.url}/v2/{PUBLIC}/{repo}/blobs/{digest}") as resp:
                assert resp.status == 200
        await alice_pulls(proxy.url, secret)


# --- a link is the upstream's word for a while ------------------------------------------


async def test_a_link_is_asked_again_after_link_ttl(
    upstreams: Upstreams,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A blob deleted from a repository upstream stops being served there once its
    link is older than ``link_ttl``; while the upstream is down an old link still
    serves (the proxy keeps serving what it was allowed to)."""
    repo = f"lib/ttl-{uuid.uuid4().hex[:6]}"
    image = await push_image(upstreams.public.url, repo, "v1", layer_sizes=(3000, 4000))
    kept, deleted = image.layers
    config = write_config(tmp_path, upstreams)
    async with (
        running_proxy(None, tmp_path / "cache", config_file=config, link_ttl=0.5) as proxy,
        aiohttp.ClientSession() as http,
    ):
        base = f"{proxy.url}/v2/{PUBLIC}/{repo}/blobs"
        for layer in (kept, deleted):
            assert await answer(http, "GET", f"{base}/{layer.digest}") == (200, "")
        async with http.delete(f"{upstreams.public.url}/v2/{repo}/blobs/{deleted.digest}") as r:
            assert r.status == 202, await r.text()
        # Within the window both are served from the cache without asking.
        heads = upstreams.public.count("HEAD", "/blobs/")
        assert await answer(http, "GET", f"{base}/{deleted.digest}") == (200, "")
        assert upstreams.public.count("HEAD", "/blobs/") == heads
        await asyncio.sleep(0.6)
        assert await answer(http, "GET", f"{base}/{deleted.digest}") == (404, "BLOB_UNKNOWN")
        assert await answer(http, "GET", f"{base}/{kept.digest}") == (200, "")
        assert upstreams.public.count("HEAD", "/blobs/") == heads + 2
        # The upstream down: the kept layer's old link still serves.
        await asyncio.sleep(0.6)
        upstreams.public.set_fault(Fault(match="/blobs/", kind="status", status=503))
        assert await answer(http, "GET", f"{base}/{kept.digest}") == (200, "")
        assert await answer(http, "GET", f"{base}/{deleted.digest}") == (404, "BLOB_UNKNOWN")


async def test_a_migrated_cache_serves_no_derived_link_the_upstream_did_not_confirm(
    upstreams: Upstreams,  # noqa: F811
    tmp_path: Path,
) -> None:
    """On a lax registry (the forwarder answers the attacker's tag with an index
    naming alice's private manifest, as a registry that checks nothing would store
    it), the attacker pulls that index through a cache of the older version (no links
    marker). The next start derives links from the cached tags, the private
    manifest's layers under the attacker's repository among them; online each is
    confirmed first (refused: the upstream does not hold it there), and while the
    upstream cannot answer a derived link is not served either."""
    secret = await push_private(upstreams, f"team/secret-{uuid.uuid4().hex[:6]}")
    repo = f"mallory/own-{uuid.uuid4().hex[:6]}"
    forged = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": secret.digest, "size": len(secret.manifest)}
            ],
        }
    ).encode()
    headers = {"Content-Type": OCI_INDEX, "Docker-Content-Digest": sha256_digest(forged)}
    lax = Fault(match=f"/v2/{repo}/manifests/lax", kind="status", status=200, body=forged)
    lax.headers = headers
    upstreams.public.set_fault(lax)
    config = write_config(tmp_path, upstreams)
    cache = tmp_path / "cache"
    async with (
        running_proxy(None, cache, config_file=config) as proxy,
        aiohttp.ClientSession() as http,
    ):
        await alice_pulls(proxy.url, secret)
        await pull_manifest(http, f"{proxy.url}/v2/{PUBLIC}/{repo}/manifests/lax", {})
    # What a cache written by the older version lacks: the marker of derived links.
    index = Index(cache / "index")
    index.set_sync(LINKS_MARKER, 0)
    index.close()
    layer = secret.layers[0].digest
    url = f"/v2/{PUBLIC}/{repo}/blobs/{layer}"
    for down in (True, False):
        if down:
            upstreams.public.set_fault(Fault(match="/blobs/", kind="status", status=503))
        async with (
            running_proxy(None, cache, config_file=config) as proxy,
            aiohttp.ClientSession() as http,
        ):
            status, _ = await answer(http, "GET", proxy.url + url)
            assert status == (503 if down else 404), (down, status)
            await alice_pulls(proxy.url, secret)
        upstreams.public.clear_faults()
        upstreams.public.set_fault(lax)
        index = Index(cache / "index")
        index.set_sync(LINKS_MARKER, 0)
        index.close()


async def test_a_client_at_its_fill_bound_cannot_tell_a_held_digest_from_an_unheld_one(
    upstreams: Upstreams,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A stranger keeps its one download slot (``max_fills_per_client = 1``) busy with
    a stalled blob of its own, then asks under its own repository for a private layer
    this node holds and for a digest nobody pulled. Were the held one confirmed with
    a HEAD (404) and the other sent to a fill (which needs a slot: 429), the status
    would tell what is cached: an unlinked pair that no manifest served there named is
    confirmed first, held or not, and both get the upstream's 404."""
    secret = await push_private(upstreams, f"team/secret-{uuid.uuid4().hex[:6]}")
    repo = f"mallory/own-{uuid.uuid4().hex[:6]}"
    big = await push_blob(upstreams.public.url, repo, uuid.uuid4().bytes * 65_536)
    stall = upstreams.public.set_fault(
        Fault(match=big.split(":")[1], kind="stall", offset=65536, methods=frozenset({"GET"}))
    )
    unheld = "sha256:" + hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    config = write_config(tmp_path, upstreams, "max_fills_per_client = 1\n")
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    try:
        async with (
            running_proxy(None, tmp_path / "cache", config_file=config) as proxy,
            aiohttp.ClientSession(connector=connector) as mallory,
        ):
            await alice_pulls(proxy.url, secret)
            base = f"{proxy.url}/v2/{PUBLIC}/{repo}/blobs"
            # The stranger's own download: its one slot, kept (it stays connected).
            holder = await mallory.get(f"{base}/{big}")
            assert holder.status == 200
            await eventually(
                lambda: proxy.fills.active >= 1, timeout=20, what="the stranger's fill running"
            )
            held = await answer(mallory, "GET", f"{base}/{secret.layers[0].digest}")
            not_held = await answer(mallory, "GET", f"{base}/{unheld}")
            holder.close()
        assert held == not_held == (404, "BLOB_UNKNOWN"), (held, not_held)
    finally:
        stall.release()
        upstreams.public.clear_faults()
