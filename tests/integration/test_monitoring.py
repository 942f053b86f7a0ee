"""The monitoring that ships names only what the proxy emits.

Two real proxies (a cluster of two, with a size limit) pull an image through the
first and again through the second (a peer's bytes); Prometheus's view comes from
the first node's metrics listener (metrics_listen), as the ServiceMonitor scrapes
it. Every ``cacheproxy_*`` name in the PrometheusRule's expressions and in the
Grafana dashboard's queries must be on that page, and every label those queries
match or group by must be one the metric carries (or one Prometheus adds to the
target). Names follow Prometheus's conventions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.integration.test_pull import ALL_MANIFESTS
from tests.support.images import push_image
from tests.support.names import unique
from tests.support.ports import free_port
from tests.support.proxy import running_proxy
from tests.support.registry import RegistryProcess
from tests.support.waiting import eventually

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "components" / "monitoring"
SECRET = b"a-cluster-secret-of-enough-bytes"
KEY = Path(__file__).resolve().parents[1] / "data" / "cosign" / "cosign.pub"
# Labels Prometheus puts on every series of a target (ServiceMonitor relabelings).
TARGET_LABELS = {"job", "instance", "node", "namespace", "pod", "service", "endpoint", "container"}
_NAME = re.compile(r"\bcacheproxy_[a-z0-9_]+\b")
_SELECTOR = re.compile(r"\b(cacheproxy_[a-z0-9_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def expressions() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every rule and every dashboard query and variable."""
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            yield f"rule {r['alert']}", r["expr"]
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            yield f"panel {panel['title']!r}", target["expr"]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            yield f"variable {var['name']}", var["definition"]


def parse_exposition(text: str) -> dict[str, set[str]]:
    """Series name -> the label names it carries, from a /metrics page. A family with
    no sample yet counts under the names its type gives its samples."""
    seen: dict[str, set[str]] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
        elif line and not line.startswith("#"):
            series = line.rsplit(" ", 1)[0]
            name, _, labels = series.partition("{")
            seen.setdefault(name, set()).update(re.findall(r'([a-zA-Z_]\w*)="', labels))
    suffixes = {"gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    for name, kind in types.items():
        if kind == "counter":
            seen.setdefault(name if name.endswith("_total") else name + "_total", set())
        for suffix in suffixes.get(kind, []):
            seen.setdefault(name + suffix, set())
    return seen


async def scrape_page(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as resp:
        assert resp.status == 200
        return await resp.text()


async def pull(
    http: aiohttp.ClientSession, base: str, name: str, digest: str, blobs: list[str]
) -> None:
    async with http.get(
        f"{base}/v2/{name}/manifests/{digest}", headers={"Accept": ALL_MANIFESTS}
    ) as resp:
        assert resp.status == 200
        await resp.read()
    for blob in blobs:
        async with http.get(f"{base}/v2/{name}/blobs/{blob}") as resp:
            assert resp.status == 200
            await resp.read()


async def test_every_metric_the_rules_and_the_dashboard_use_is_emitted(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    image = await push_image(registry.url, unique("monitoring"), "v1", layer_sizes=(5000, 70_000))
    blobs = [b.digest for b in image.blobs]
    ports = [free_port() for _ in range(2)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    secret = tmp_path / "peer-secret"
    secret.write_bytes(SECRET)
    # A signature policy that only counts (the image is unsigned), so its series are on
    # the page the rules read.
    policy = tmp_path / "policy.toml"
    policy.write_text(
        f'[[policy]]\nname = "all"\nrepositories = ["*"]\nkeys = ["{KEY}"]\nmode = "audit"\n'
    )
    scrape_at = f"127.0.0.2:{free_port('127.0.0.2')}"
    async with AsyncExitStack() as stack:
        proxies = []
        for i, (port, url) in enumerate(zip(ports, urls, strict=True)):
            extra = {"metrics_listen": scrape_at} if i == 0 else {}
            proxies.append(
                await stack.enter_async_context(
                    running_proxy(
                        registry.url,
                        tmp_path / f"n{i}",
                        config_file=policy if i == 0 else None,
                        port=port,
                        peers=tuple(urls),
                        self_url=url,
                        peer_secret_file=secret,
                        max_size="1GiB",
                        **extra,
                    )
                )
            )
        http = await stack.enter_async_context(aiohttp.ClientSession())
        for proxy in (proxies[0], proxies[1], proxies[0]):
            await pull(http, proxy.url, image.name, image.digest, blobs)

        # The keeper counts the cache after a fill (it is poked).
        async def counted() -> str | None:
            page = await scrape_page(http, f"http://{scrape_at}/metrics")
            return page if "cacheproxy_cache_bytes " in page else None

        page = await eventually(counted, timeout=10, what="cacheproxy_cache_bytes on the page")
    emitted = parse_exposition(page)
    missing: list[str] = []
    for where, expr in expressions():
        names = set(_NAME.findall(expr))
        # Prometheus's own up{job="cacheproxy"} is the one other series allowed.
        assert names or 'up{job="cacheproxy"}' in expr, f"{where}: {expr}"
        labels_here: set[str] = set().union(*(emitted.get(n, set()) for n in names))
        for name in names:
            if name not in emitted:
                missing.append(f"{where}: {name}")
        for name, matchers in _SELECTOR.findall(expr):
            for label in _MATCHER.findall(matchers):
                if label not in TARGET_LABELS and emitted.get(name) and label not in emitted[name]:
                    missing.append(f"{where}: {name} has no label {label}")
        for grouping in _GROUPING.findall(expr):
            for label in (x.strip() for x in grouping.split(",") if x.strip()):
                if label not in TARGET_LABELS | {"le"} and labels_here and label not in labels_here:
                    missing.append(f"{where}: no metric of it has the label {label}")
    assert not missing, "\n".join(missing)
    # The names themselves: one prefix, counters end in _total, byte and second
    # units in their names, a bounded label set.
    for name, labels in emitted.items():
        if not name.startswith("cacheproxy_"):
            continue
        assert re.fullmatch(r"cacheproxy_[a-z0-9_]+", name), name
        assert not name.endswith("_total_total"), name
        assert len(labels) <= 4, (name, labels)
    assert emitted["cacheproxy_build_info"] >= {"version"}
    assert {"kind", "source"} <= emitted["cacheproxy_first_byte_seconds_bucket"]
    # The first node answered the image twice: every answer was timed, by its source.
    for kind, answers in (("manifest", 2), ("blob", 2 * len(blobs))):
        prefix = f'cacheproxy_first_byte_seconds_count{{kind="{kind}",'
        counts = [float(ln.split()[-1]) for ln in page.splitlines() if ln.startswith(prefix)]
        assert len(counts) == 4 and sum(counts) == answers, (kind, counts)


def test_the_dashboard_asks_for_its_data_source() -> None:
    """No data source is hard-coded (spegel #509): every panel and query names the
    dashboard's data-source variable, which lists Prometheus sources."""
    dashboard: dict[str, Any] = json.loads((MONITORING / "dashboard.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    wanted = {"type": "prometheus", "uid": "${datasource}"}
    for panel in dashboard["panels"]:
        assert panel["datasource"] == wanted, panel["title"]
        assert all(t["datasource"] == wanted for t in panel["targets"]), panel["title"]
    assert variables["node"]["datasource"] == wanted
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
