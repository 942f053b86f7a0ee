"""Conditional requests (RFC 9110 section 13) through a real proxy to the real
registry: ETag, If-None-Match (304), If-Match (412) and If-Range, by tag, by digest
and for blobs; a 304 brings nothing from the upstream and is no pull in the ledger."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import aiohttp

from cacheproxy.http.keys import SAVINGS
from cacheproxy.registries import normalize_host
from cacheproxy.savings.db import Counts
from tests.support.forwarder import Forwarder
from tests.support.images import PushedImage, push_image
from tests.support.names import unique
from tests.support.proxy import RunningProxy, running_proxy

ACCEPT = "application/vnd.oci.image.manifest.v1+json"
OTHER = '"sha256:' + "0" * 64 + '"'


@dataclasses.dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


async def ask(http: aiohttp.ClientSession, method: str, url: str, **headers: str) -> Answer:
    """One request, its header names spelt with dashes (``If_None_Match``)."""
    sent = {"Accept": ACCEPT} | {k.replace("_", "-"): v for k, v in headers.items()}
    async with http.request(method, url, headers=sent) as resp:
        return Answer(resp.status, resp.headers.copy(), await resp.read())


def ledger(proxy: RunningProxy, forwarder: Forwarder) -> Counts:
    """The proxy's all-time counts for the forwarder's upstream (a copy)."""
    found = proxy.app[SAVINGS].ledger.totals().get(normalize_host(forwarder.host))
    return dataclasses.replace(found) if found is not None else Counts()


def urls(proxy: RunningProxy, image: PushedImage) -> dict[str, tuple[str, str]]:
    """What is asked for, and its entity tag: a manifest by tag, by digest, a blob."""
    base = f"{proxy.url}/v2/{image.name}"
    layer = image.layers[0].digest
    return {
        "tag": (f"{base}/manifests/{image.tag}", f'"{image.digest}"'),
        "digest": (f"{base}/manifests/{image.digest}", f'"{image.digest}"'),
        "blob": (f"{base}/blobs/{layer}", f'"{layer}"'),
    }


def assert_not_modified(answer: Answer, etag: str, what: str) -> None:
    assert answer.status == 304, (what, answer.status, answer.body[:200])
    assert answer.body == b""
    assert answer.headers["ETag"] == etag
    assert answer.headers["Docker-Content-Digest"] == etag.strip('"')
    # RFC 9110 section 15.4.5: no representation metadata beyond the listed fields.
    assert "Content-Type" not in answer.headers, what
    assert answer.headers.get("Content-Length", "0") == "0", what
    assert "Date" in answer.headers
    if what == "blob":
        assert answer.headers["Cache-Control"] == "public, max-age=31536000, immutable"


async def test_if_none_match_answers_304_by_tag_by_digest_and_for_blobs(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    image = await push_image(forwarder.url, unique("cond"), "v1", layer_sizes=(30_000,))
    async with (
        running_proxy(forwarder.url, tmp_path / "cache") as proxy,
        aiohttp.ClientSession() as http,
    ):
        targets = urls(proxy, image)
        for what, (url, etag) in targets.items():
            warm = await ask(http, "GET", url)
            assert warm.status == 200 and warm.headers["ETag"] == etag, what
        before = ledger(proxy, forwarder)
        asked = forwarder.count()
        for what, (url, etag) in targets.items():
            for method in ("GET", "HEAD"):
                for condition in (
                    etag,
                    f"W/{etag}",  # If-None-Match compares weakly (section 13.1.2)
                    f'{OTHER}, "sha256:{"1" * 64}",{etag}',  # a list
                    "*",
                ):
                    got = await ask(http, method, url, If_None_Match=condition)
                    assert_not_modified(got, etag, what)
            # Another entity tag: the whole answer, as without the header.
            got = await ask(http, "GET", url, If_None_Match=OTHER)
            assert got.status == 200 and got.headers["ETag"] == etag, what
            if what == "blob":
                assert got.body == image.blob_data[etag.strip('"')]
            else:
                assert got.body == image.manifest
        # The 304s asked the upstream nothing; only the three 200s are in the ledger.
        assert forwarder.count() == asked
        after = ledger(proxy, forwarder)
        assert after.manifests_served - before.manifests_served == 2
        assert after.blobs_served - before.blobs_served == 1
        sent = 2 * len(image.manifest) + image.layers[0].size
        assert after.served - before.served == sent


async def test_a_304_for_what_is_not_held_starts_no_fill_and_is_no_pull(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    """A conditional GET that matches costs what a HEAD costs: the upstream is asked
    whether the repository has it (HEAD), never for the bytes."""
    image = await push_image(forwarder.url, unique("cond"), "v1", layer_sizes=(40_000,))
    async with (
        running_proxy(forwarder.url, tmp_path / "cache") as proxy,
        aiohttp.ClientSession() as http,
    ):
        targets = urls(proxy, image)
        before = ledger(proxy, forwarder)
        for what in ("tag", "blob"):
            url, etag = targets[what]
            assert_not_modified(await ask(http, "GET", url, If_None_Match=etag), etag, what)
        path = f"/v2/{image.name}/"
        assert forwarder.count("GET", path) == 0
        assert forwarder.count("HEAD", path) == 2
        assert not proxy.fills.active and proxy.fills.stats.upstream_gets == 0
        layer = image.layers[0].digest
        assert not proxy.blob_path(layer).exists()
        assert ledger(proxy, forwarder) == before
        # Unconditional, the same blob is fetched and served whole.
        got = await ask(http, "GET", targets["blob"][0])
        assert got.status == 200 and got.body == image.blob_data[layer]


async def test_a_digest_the_repository_lacks_is_refused_whatever_the_condition(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    """RFC 9110 section 13.2.1: the conditions count only where the request without
    them would succeed. "*" matches what exists, and only that."""
    image = await push_image(forwarder.url, unique("cond"), "v1", layer_sizes=(1000,))
    missing = "sha256:" + hashlib.sha256(b"never pushed").hexdigest()
    async with (
        running_proxy(forwarder.url, tmp_path / "cache") as proxy,
        aiohttp.ClientSession() as http,
    ):
        for what, (url, etag) in urls(proxy, image).items():
            assert_not_modified(await ask(http, "GET", url, If_None_Match="*"), etag, what)
        base = f"{proxy.url}/v2/{image.name}"
        for url, code in (
            (f"{base}/blobs/{missing}", "BLOB_UNKNOWN"),
            (f"{base}/manifests/{missing}", "MANIFEST_UNKNOWN"),
            (f"{base}/manifests/no-such-tag", "MANIFEST_UNKNOWN"),
        ):
            for condition in (
                {"If_None_Match": f'"{missing}"'},
                {"If_None_Match": "*"},
                {"If_Match": OTHER},
            ):
                got = await ask(http, "GET", url, **condition)
                assert got.status == 404, (url, condition)
                assert json.loads(got.body)["errors"][0]["code"] == code


async def test_if_match_fails_with_412_on_another_entity_tag(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    image = await push_image(forwarder.url, unique("cond"), "v1", layer_sizes=(20_000,))
    async with (
        running_proxy(forwarder.url, tmp_path / "cache") as proxy,
        aiohttp.ClientSession() as http,
    ):
        for what, (url, etag) in urls(proxy, image).items():
            for condition in (etag, f"{OTHER}, {etag}", "*"):
                got = await ask(http, "GET", url, If_Match=condition)
                assert got.status == 200 and got.headers["ETag"] == etag, (what, condition)
            # Strong comparison (section 13.1.1): a weak tag never matches.
            for condition in (OTHER, f"W/{etag}", "not-an-entity-tag"):
                for method in ("GET", "HEAD"):
                    got = await ask(http, method, url, If_Match=condition)
                    assert got.status == 412, (what, condition, method)
                    if method == "GET":
                        error = json.loads(got.body)["errors"][0]
                        assert error["code"] == "PRECONDITION_FAILED"
            # Section 13.2.2: If-Match is evaluated before If-None-Match.
            got = await ask(http, "GET", url, If_Match=OTHER, If_None_Match=etag)
            assert got.status == 412, what
            got = await ask(http, "GET", url, If_Match=etag, If_None_Match=etag)
            assert got.status == 304, what


async def test_if_range_resumes_only_the_same_blob(forwarder: Forwarder, tmp_path: Path) -> None:
    image = await push_image(forwarder.url, unique("cond"), "v1", layer_sizes=(50_000, 60_000))
    async with (
        running_proxy(forwarder.url, tmp_path / "cache") as proxy,
        aiohttp.ClientSession() as http,
    ):
        # One blob held, one not: a resume of a miss goes through the fill.
        held, missed = (layer.digest for layer in image.layers)
        assert (await ask(http, "GET", f"{proxy.url}/v2/{image.name}/blobs/{held}")).status == 200
        for digest in (missed, held):
            url = f"{proxy.url}/v2/{image.name}/blobs/{digest}"
            data = image.blob_data[digest]
            got = await ask(http, "GET", url, Range="bytes=1000-", If_Range=f'"{digest}"')
            assert got.status == 206, digest
            assert got.headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
            assert got.body == data[1000:]
            for validator in (
                OTHER,
                f'W/"{digest}"',  # If-Range compares strongly (section 13.1.5)
                "Sun, 06 Nov 1994 08:49:37 GMT",  # a date: blobs carry no Last-Modified
            ):
                got = await ask(http, "GET", url, Range="bytes=1000-", If_Range=validator)
                assert got.status == 200, (digest, validator)
                assert "Content-Range" not in got.headers
                assert got.body == data
