"""The savings dashboard in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import aiohttp
import pytest

from cacheproxy.http.keys import SAVINGS
from cacheproxy.registries import normalize_host
from tests.support.browser import CHROMIUM, chromium_page
from tests.support.clients import skopeo
from tests.support.forwarder import Forwarder
from tests.support.images import push_image
from tests.support.names import unique
from tests.support.proxy import running_proxy

# A price for the test upstream (a local registry has none): $1000 per GB, so the
# few megabytes of the test are dollars the page must show, not fractions of a cent.
PRICING = """
format = 1
[charges.test-egress]
title = "test egress"
source = "https://example.com/test-prices"
read = "2026-01-01"
bands = [{ usd_per_gb = 1000 }]

[[registries]]
id = "local"
title = "local test registry"
match = ["127.0.0.1:*"]
paths.internet = ["test-egress"]
paths.nat-gateway = []
paths.cross-region = []
paths.same-region = []
paths.vpc-endpoint = []
"""

# What the page rendered, read back out of its DOM.
READ_PAGE = """(() => {
  const bars = [...document.querySelectorAll('#chart rect.bar')];
  const line = document.querySelector('#chart polyline.saved');
  return {
    state: document.body.dataset.state,
    bars: bars.map(r => ({cls: r.classList[1], bytes: Number(r.dataset.bytes),
                          height: Number(r.getAttribute('height')), day: r.dataset.day})),
    points: line ? line.getAttribute('points').split(' ').length : 0,
    usd: line ? Number(line.dataset.usd) : null,
    tiles: Object.fromEntries(['hit', 'served', 'avoided', 'saved', 'pulls']
      .map(id => [id, document.getElementById(id).textContent])),
    repos: [...document.querySelectorAll('#repos tbody tr')].map(tr => tr.cells[0].textContent),
    upstreams: [...document.querySelectorAll('#upstreams tbody tr')]
      .map(tr => tr.cells[0].textContent),
  };
})()"""


@pytest.fixture(scope="session")
def require_chromium() -> None:
    if shutil.which(CHROMIUM) is None:
        pytest.fail("missing required binary: chromium (apt-get install chromium)", pytrace=False)


async def test_dashboard_renders_the_ledger_in_chromium(
    require_chromium: None, forwarder: Forwarder, tmp_path: Path
) -> None:
    name = unique("dash")
    image = await push_image(forwarder.url, name, "v1", layer_sizes=(400_000, 900_000))
    pricing = tmp_path / "prices.toml"
    pricing.write_text(PRICING)
    async with running_proxy(forwarder.url, tmp_path / "cache", pricing_file=pricing) as proxy:
        ref = f"docker://{proxy.host}/{image.reference}"
        for out in ("cold", "warm"):
            (await skopeo("copy", "--src-tls-verify=false", ref, f"dir:{tmp_path / out}")).check()
        up = normalize_host(forwarder.host)
        counts = proxy.app[SAVINGS].ledger.totals()[up]
        async with (
            aiohttp.ClientSession() as http,
            http.get(proxy.url + "/dashboard/data?days=7") as resp,
        ):
            data = await resp.json()

        async with chromium_page(tmp_path / "chromium-profile") as page:
            await page.goto(proxy.url + "/dashboard?days=7")
            state = await page.wait_for("document.body.dataset.state !== 'loading' && "
                                        "document.body.dataset.state")  # fmt: skip
            shown = await page.evaluate(READ_PAGE)

    assert state == "ready", page.problems
    assert page.problems == []
    # The chart is drawn from the ledger: one bar per source that served bytes
    # today, each as many bytes as the ledger counted, with a visible height.
    by_source = {bar["cls"]: bar for bar in shown["bars"]}
    assert set(by_source) == {"cache", "upstream"}
    assert by_source["cache"]["bytes"] == counts.served_cache > 1_300_000
    assert by_source["upstream"]["bytes"] == counts.served_upstream
    assert all(bar["height"] > 0 for bar in shown["bars"])
    assert by_source["cache"]["day"] == dt.datetime.now(dt.UTC).date().isoformat()
    # Dollars saved: the cumulative line over the seven days, ending at the total.
    assert shown["points"] == 7
    saved = data["totals"]["saved_usd"]
    assert saved == pytest.approx(counts.avoided / 2**30 * 1000, abs=1e-3)
    assert shown["usd"] == pytest.approx(saved, abs=1e-4)
    assert shown["tiles"]["saved"] == f"${saved:.2f}"
    assert shown["tiles"]["hit"] == "50.0%"
    assert shown["tiles"]["pulls"] == "1"
    assert shown["repos"] == [name]
    assert shown["upstreams"] == [up]


async def test_dashboard_data_refuses_bad_ranges(tmp_path: Path) -> None:
    async with (
        running_proxy("http://127.0.0.1:9", tmp_path / "cache") as proxy,
        aiohttp.ClientSession() as http,
    ):
        for query in ("days=0", "days=9999", "days=x", "top=0"):
            async with http.get(f"{proxy.url}/dashboard/data?{query}") as resp:
                assert resp.status == 400, query
        async with http.get(proxy.url + "/dashboard/data") as resp:
            assert resp.status == 200
            assert (await resp.json())["totals"]["bytes_served"] == 0
        async with http.get(proxy.url + "/dashboard") as resp:
            assert resp.status == 200
            assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
            # Self-contained: no URL to load anything from (the SVG namespace is a name).
            body = await resp.text()
            assert "https://" not in body and "src=" not in body
