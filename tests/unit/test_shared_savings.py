"""The shared tier in the ledger and the report: the schema grows in place, and the
dollars equal the hand computation."""

from __future__ import annotations

import sqlite3
from decimal import Decimal as D
from pathlib import Path

from cacheproxy.config import load_config
from cacheproxy.savings import db, render, report
from cacheproxy.savings.db import Counts
from cacheproxy.savings.prices import load_pricing

GIB = 2**30
ECR = "123456789012.dkr.ecr.us-west-2.amazonaws.com"

V1_COLUMNS = [
    "served_cache",
    "served_peer",
    "served_upstream",
    "blobs_served",
    "manifests_served",
    "pulls_avoided",
    "upstream_requests",
    "upstream_bytes",
    "stored_blobs",
    "stored_bytes",
]


def v1_ledger(path: Path) -> None:
    """A ledger as the first schema wrote it, with one row."""
    columns = ", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in V1_COLUMNS)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            f"CREATE TABLE usage (day TEXT NOT NULL, upstream TEXT NOT NULL, repo TEXT NOT NULL,"
            f" {columns}, PRIMARY KEY (day, upstream, repo)) WITHOUT ROWID"
        )
        conn.execute(
            "INSERT INTO usage (day, upstream, repo, served_cache) VALUES (?, ?, ?, ?)",
            ("2026-03-02", ECR, "app/a", 123),
        )
        conn.execute("PRAGMA user_version = 1")
    conn.close()


def test_a_first_schema_ledger_is_read_as_is_and_grown_by_the_server(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    v1_ledger(path)
    reader = db.open_reader(path)
    assert reader is not None
    # A reader never changes the file: the new columns read as zeros.
    assert db.by_upstream(reader)[ECR] == Counts(served_cache=123)
    reader.close()
    assert "served_shared" not in {r[1] for r in sqlite3.connect(path).execute(
        "PRAGMA table_info(usage)")}  # fmt: skip

    conn = db.connect(path)  # what the server does at start
    db.add(conn, {("2026-03-02", ECR, "app/a"): Counts(served_shared=7, shared_get_requests=2)})
    assert db.by_upstream(conn)[ECR] == Counts(
        served_cache=123, served_shared=7, shared_get_requests=2
    )
    assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION
    conn.close()
    db.connect(path).close()  # a second start adds nothing


def month(tmp_path: Path, shared: str) -> report.Report:
    """ECR us-west-2 over the internet: 8192 GB fetched on the 2nd; on the 20th 1024 GB
    served from the shared tier (2,000 GETs), 100 GB written back (500 PUTs)."""
    cache = tmp_path / "cache"
    conn = db.connect(cache / "ledger.db")
    db.add(
        conn,
        {
            ("2026-03-02", ECR, "app/a"): Counts(
                served_upstream=8192 * GIB, upstream_bytes=8192 * GIB, upstream_requests=1
            ),
            ("2026-03-20", ECR, "app/a"): Counts(
                served_shared=1024 * GIB,
                shared_get_requests=2000,
                shared_get_bytes=1024 * GIB,
                shared_put_requests=500,
                shared_put_bytes=100 * GIB,
            ),
        },
    )
    conn.close()
    config_file = tmp_path / "c.toml"
    config_file.write_text(f'[shared]\nbucket = "b"\nregion = "us-east-1"\n{shared}')
    config = load_config(file=config_file, env={}, flags={"cache_dir": cache})
    return report.read(
        config, load_pricing(), report.parse_day("2026-03"), report.parse_day("2026-03", end=True)
    )


def test_what_the_shared_tier_saved_and_cost_same_region(tmp_path: Path) -> None:
    result = month(tmp_path, "")
    total = result.total
    # The bucket's 1024 GB sit on top of the month's 8192 GB: all in the $0.09 band.
    assert total.shared_saved_usd == D("1024") * D("0.09")
    assert total.saved_usd == total.shared_saved_usd
    # Requests only: same-region transfer is free.
    assert total.shared_cost_usd == D("2000") * D("0.0004") / 1000 + D("500") * D("0.005") / 1000
    # Storage of what was written, per month kept: 100 GB at $0.023.
    assert result.storage_usd_month == D("100") * D("0.023")
    assert total.counts.avoided == 1024 * GIB
    as_json = result.to_json()
    assert as_json["totals"]["bytes_from_shared"] == 1024 * GIB
    assert as_json["shared_tier"]["store"] == "Amazon S3 Standard"
    text = render.table(result)
    assert "shared tier (Amazon S3 Standard via same-region, us-east-1)" in text
    assert "2,000 GET/HEAD, 500 PUT/POST/LIST" in text
    assert "bytes_from_shared" in render.to_csv(result).splitlines()[0]


def test_a_bucket_in_another_region_costs_its_transfer(tmp_path: Path) -> None:
    total = month(tmp_path, 'network_path = "cross-region"\n').total
    requests = D("2000") * D("0.0004") / 1000 + D("500") * D("0.005") / 1000
    assert total.shared_cost_usd == D("1024") * D("0.02") + requests


def test_a_self_hosted_store_costs_nothing(tmp_path: Path) -> None:
    result = month(tmp_path, 'price = "self-hosted"\n')
    assert result.total.shared_cost_usd == 0
    assert result.storage_usd_month == 0
    assert result.total.shared_saved_usd == D("1024") * D("0.09")
