"""The savings ledger against real pulls: a real registry upstream, real skopeo, and
the bytes counted on the wire on both sides of the proxy."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from cacheproxy.http.keys import SAVINGS
from cacheproxy.registries import normalize_host
from cacheproxy.savings.db import Counts
from tests.support.clients import run_process, skopeo
from tests.support.forwarder import Forwarder
from tests.support.images import PushedImage, push_image
from tests.support.names import unique
from tests.support.process import crash, serve_process
from tests.support.proxy import RunningProxy, running_proxy
from tests.support.registry import RegistryProcess
from tests.support.waiting import eventually

ACCEPT = "application/vnd.oci.image.manifest.v1+json"


async def ledger_counts(proxy: RunningProxy, upstream: str) -> Counts:
    """The proxy's counts for one upstream, as written to its ledger database."""
    savings = proxy.app[SAVINGS]
    today = dt.datetime.now(dt.UTC).date()
    # From yesterday: a pull that straddles midnight UTC is still all there.
    report = await savings.report(today - dt.timedelta(days=1), today, top=100)
    line = next(u for u in report.upstreams if u.name == normalize_host(upstream))
    # The in-memory totals (what /metrics shows) agree with the database.
    assert savings.ledger.totals()[line.name] == line.counts
    return line.counts


async def pull_with_skopeo(host: str, image: PushedImage, out: Path) -> None:
    ref = f"docker://{host}/{image.reference}"
    (await skopeo("copy", "--src-tls-verify=false", ref, f"dir:{out}")).check()


def pulled_bytes(image: PushedImage, out: Path) -> int:
    """What skopeo wrote: the manifest and each blob, as files."""
    total = (out / "manifest.json").stat().st_size
    for blob in image.all_blobs():
        total += (out / blob.digest.split(":")[1]).stat().st_size
    return total


async def test_ledger_adds_up_to_the_bytes_clients_received(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    name = unique("savings")
    image = await push_image(forwarder.url, name, "v1", layer_sizes=(300_000, 1_100_000))
    pushed = forwarder.body_bytes("GET", f"/v2/{name}/")
    async with (
        running_proxy(forwarder.url, tmp_path / "cache") as proxy,
        # Between skopeo and the proxy: what crossed the wire to the client.
        Forwarder(proxy.url) as client_side,
    ):
        # (The repository's endpoints only: /v2/ itself answers a 2-byte "{}".)
        await pull_with_skopeo(client_side.host, image, tmp_path / "cold")
        cold = client_side.body_bytes("GET", f"/v2/{name}/")
        await pull_with_skopeo(client_side.host, image, tmp_path / "warm")
        warm = client_side.body_bytes("GET", f"/v2/{name}/") - cold
        counts = await ledger_counts(proxy, forwarder.host)

        manifest_gets = client_side.count("GET", "/manifests/")
        metrics = await _get_text(proxy.url + "/metrics")

    # The client side: the bytes skopeo got are the files it wrote, twice over.
    assert cold == pulled_bytes(image, tmp_path / "cold") > 1_400_000
    assert warm == pulled_bytes(image, tmp_path / "warm") == cold
    # The ledger: every byte, by source. The cold pull came from upstream through
    # this request's own fills; the warm one from the cache.
    assert counts.served == cold + warm
    assert counts.served_upstream == cold
    assert counts.served_cache == warm
    assert counts.served_peer == 0
    assert counts.blobs_served == 2 * len(image.all_blobs())
    assert counts.manifests_served == manifest_gets == 2
    assert counts.pulls_avoided == 1
    # The upstream side: what the proxy fetched is what the registry sent it.
    assert counts.upstream_bytes == forwarder.body_bytes("GET", f"/v2/{name}/") - pushed
    assert counts.upstream_requests == forwarder.count("GET", f"/v2/{name}/")
    assert counts.stored_bytes == sum(b.size for b in image.all_blobs())
    assert counts.stored_blobs == len(image.all_blobs())
    # /metrics carries the same counters.
    up = normalize_host(forwarder.host)
    served = "cacheproxy_savings_served_bytes_total"
    assert sample(metrics, served, upstream=up, source="cache") == warm
    assert sample(metrics, served, upstream=up, source="upstream") == cold
    assert sample(metrics, "cacheproxy_savings_upstream_bytes_total", upstream=up) == (
        counts.upstream_bytes
    )
    assert sample(metrics, "cacheproxy_savings_pulls_avoided_total", upstream=up) == 1
    # This upstream (a local registry) has no per-byte price: nothing saved in dollars.
    assert sample(metrics, "cacheproxy_savings_month_saved_usd", upstream=up) == 0


async def test_restart_keeps_the_totals(forwarder: Forwarder, tmp_path: Path) -> None:
    name = unique("restart")
    image = await push_image(forwarder.url, name, "v1", layer_sizes=(200_000,))
    cache = tmp_path / "cache"
    async with running_proxy(forwarder.url, cache) as proxy:
        await pull_with_skopeo(proxy.host, image, tmp_path / "a")
        before = await ledger_counts(proxy, forwarder.host)
    async with running_proxy(forwarder.url, cache) as proxy:
        up = normalize_host(forwarder.host)
        # Loaded from disk at start: the totals and the metrics continue.
        assert proxy.app[SAVINGS].ledger.totals()[up] == before
        metrics = await _get_text(proxy.url + "/metrics")
        served = "cacheproxy_savings_served_bytes_total"
        assert sample(metrics, served, upstream=up, source="upstream") == before.served_upstream
        await pull_with_skopeo(proxy.host, image, tmp_path / "b")
        after = await ledger_counts(proxy, forwarder.host)
    assert after.served == 2 * before.served
    assert after.served_cache == before.served_upstream
    assert after.upstream_bytes == before.upstream_bytes


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"no sample {name} {labels}")


async def _get_text(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        return await resp.text()


async def report_json(cache: Path, upstream: str) -> dict[str, object]:
    result = await run_process(
        sys.executable, "-m", "cacheproxy", "report", "--json", "--cache-dir", str(cache),
        "--upstream", upstream, timeout=30,
    )  # fmt: skip
    doc: dict[str, object] = json.loads(result.check().stdout)
    return doc


async def test_report_reads_a_running_server_and_survives_kill_9(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    name = unique("crash")
    image = await push_image(registry.url, name, "v1", layer_sizes=(250_000,))
    cache = tmp_path / "cache"
    args = ("--upstream", registry.url, "--cache-dir", str(cache))
    env = {"CACHEPROXY_SAVINGS_FLUSH_INTERVAL": "0.2"}
    async with serve_process(*args, env=env, log=tmp_path / "serve.log") as (proc, url):
        host = url.removeprefix("http://")
        await pull_with_skopeo(host, image, tmp_path / "out")
        expected = pulled_bytes(image, tmp_path / "out")

        # Read by another process while the server runs: within a flush interval
        # (0.2 s here) every byte is there.
        async def flushed() -> bool:
            totals = (await report_json(cache, registry.url))["totals"]
            assert isinstance(totals, dict)
            return bool(totals["bytes_served"] == expected)

        await eventually(flushed, timeout=10, interval=0.2, what="every byte in the ledger")
        await crash(proc)  # no close, no final flush
    after = (await report_json(cache, registry.url))["totals"]
    assert isinstance(after, dict)
    assert after["bytes_served"] == after["bytes_from_upstream"] == expected
    assert after["bytes_from_cache"] == after["bytes_from_peers"] == 0
    assert after["saved_usd"] == 0.0
