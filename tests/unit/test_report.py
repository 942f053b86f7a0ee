"""The savings report: dollars equal the hand computation for a known month."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from decimal import Decimal as D
from pathlib import Path

import pytest

from cacheproxy.cli import main
from cacheproxy.config import load_config
from cacheproxy.savings import db, render, report
from cacheproxy.savings.db import Counts
from cacheproxy.savings.prices import load_pricing

GIB = 2**30
ECR = "123456789012.dkr.ecr.us-west-2.amazonaws.com"
HUB = "docker.io"


def write(cache: Path, rows: dict[tuple[str, str, str], Counts]) -> None:
    conn = db.connect(cache / "ledger.db")
    db.add(conn, rows)
    conn.close()


@pytest.fixture
def month(tmp_path: Path) -> Path:
    """A known March 2026 (and a little of April) in a ledger.

    ECR us-west-2 over the internet: 8192 GB fetched on the 2nd, then 4096 GB served
    from the cache on the 20th, 1024 of them to app/b. Docker Hub: 30 pulls avoided.
    """
    cache = tmp_path / "cache"
    write(
        cache,
        {
            ("2026-03-02", ECR, "app/a"): Counts(
                served_upstream=8192 * GIB,
                blobs_served=100,
                manifests_served=10,
                upstream_requests=110,
                upstream_bytes=8192 * GIB,
                stored_blobs=100,
                stored_bytes=8192 * GIB,
            ),
            ("2026-03-20", ECR, "app/a"): Counts(served_cache=3072 * GIB, pulls_avoided=5),
            ("2026-03-20", ECR, "app/b"): Counts(served_cache=1024 * GIB),
            ("2026-03-21", HUB, "library/alpine"): Counts(
                served_cache=3 * 10**6, manifests_served=30, pulls_avoided=30
            ),
            # April starts again at the first band.
            ("2026-04-01", ECR, "app/a"): Counts(served_cache=100 * GIB),
        },
    )
    return cache


def run(cache: Path, since: str, until: str) -> report.Report:
    config = load_config(env={}, flags={"cache_dir": cache})
    return report.read(
        config, load_pricing(), report.parse_day(since), report.parse_day(until, end=True)
    )


def test_dollars_equal_the_hand_computation(month: Path) -> None:
    got = run(month, "2026-03", "2026-03")
    ecr = next(u for u in got.upstreams if u.name == ECR)
    # Without the cache March would have been 12288 GB: the avoided 4096 GB are the
    # top of the month, 2048 GB at $0.09 (up to 10240 GB) and 2048 GB at $0.085.
    assert ecr.saved_usd == D(2048) * D("0.09") + D(2048) * D("0.085") == D("358.40")
    # What the month's real transfer cost: 8192 GB at $0.09.
    assert ecr.cost_usd == D("737.28")
    assert got.total.saved_usd == D("358.40")  # Docker Hub: no per-byte price
    hub = next(u for u in got.upstreams if u.name == HUB)
    assert hub.counts.pulls_avoided == 30 and hub.saved_usd == 0
    # 30 pulls are three hours of the anonymous 10/hour limit.
    assert hub.to_json()["limit_windows_avoided"] == 3.0


def test_a_range_inside_a_month_keeps_the_months_tier_position(month: Path) -> None:
    # Starting on the 20th: the 8192 GB of the 2nd still set the tier position.
    assert run(month, "2026-03-20", "2026-03-31").total.saved_usd == D("358.40")
    assert run(month, "2026-03-21", "2026-03-31").total.saved_usd == 0
    # April starts from zero: 100 GB at the first band.
    assert run(month, "2026-04", "2026-04").total.saved_usd == D("9.00")
    both = run(month, "2026-03-01", "2026-04-30")
    assert both.total.saved_usd == D("367.40")
    assert [(d.isoformat(), line.saved_usd) for d, line in both.days] == [
        ("2026-03-02", D(0)),
        ("2026-03-20", D("358.40")),
        ("2026-03-21", D(0)),
        ("2026-04-01", D("9.00")),
    ]


def test_repositories_share_their_upstreams_saving_by_bytes_avoided(month: Path) -> None:
    got = run(month, "2026-03", "2026-03")
    repos = {(up, repo): line for up, repo, line in got.repositories}
    assert repos[(ECR, "app/a")].saved_usd == D("268.80")  # 3072 / 4096 of 358.40
    assert repos[(ECR, "app/b")].saved_usd == D("89.60")
    assert [r for _, r, _ in got.repositories][:2] == ["app/a", "app/b"]


def test_json_totals_and_csv(month: Path) -> None:
    got = run(month, "2026-03", "2026-03")
    doc = got.to_json()
    totals = doc["totals"]
    assert totals["bytes_served"] == 12288 * GIB + 3 * 10**6
    assert totals["bytes_from_cache"] == 4096 * GIB + 3 * 10**6
    assert totals["bytes_from_peers"] == 0
    assert totals["bytes_from_upstream"] == 8192 * GIB
    assert totals["saved_usd"] == 358.4
    ecr = next(u for u in doc["upstreams"] if u["upstream"] == ECR)
    (charge,) = ecr["pricing"]["charges"]
    assert charge["source"] == "https://aws.amazon.com/ecr/pricing/" and charge["read"]
    json.dumps(doc)  # serialisable as is

    rows = list(csv.DictReader(io.StringIO(render.to_csv(got))))
    assert rows[-1]["scope"] == "total" and rows[-1]["saved_usd"] == "358.4"
    assert {r["scope"] for r in rows} == {"upstream", "repository", "day", "total"}


def test_table_names_every_price_it_used(month: Path) -> None:
    text = render.table(run(month, "2026-03", "2026-03"))
    assert "358.40" in text and "top repositories" in text
    assert "https://aws.amazon.com/ecr/pricing/" in text
    assert "https://docs.docker.com/docker-hub/usage/" in text
    assert "30 (3.0 x 10/1h)" in text


def test_cli_report_json(month: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["report", "--cache-dir", str(month), "--since", "2026-03-01", "--until", "2026-03-31"]
    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["totals"]["saved_usd"] == 358.4
    assert main([*argv, "--csv"]) == 0
    assert capsys.readouterr().out.startswith("scope,day,upstream,repository,bytes_served")
    assert main(argv) == 0
    assert "cacheproxy savings 2026-03-01 .. 2026-03-31" in capsys.readouterr().out
    assert main(["report", "--cache-dir", str(month), "--since", "March"]) == 2
    assert "expected a date" in capsys.readouterr().err


def test_an_empty_cache_reports_nothing(tmp_path: Path) -> None:
    got = run(tmp_path / "empty", "2026-03", "2026-03")
    assert got.upstreams == [] and got.total.counts.served == 0
    assert "nothing served" in render.table(got)


def test_month_arguments() -> None:
    assert report.parse_day("2026-02", end=True) == dt.date(2026, 2, 28)
    assert report.parse_day("2024-02", end=True) == dt.date(2024, 2, 29)
    assert report.parse_day("2026-12", end=True) == dt.date(2026, 12, 31)
    assert report.parse_day("2026-12") == dt.date(2026, 12, 1)
