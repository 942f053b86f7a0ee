"""``cacheproxy report``: read the ledger (server running or not) and print the report."""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import TextIO

from ..config import Config
from ..layout import CacheLayout
from ..savings import render, report
from ..savings.prices import PricingError, load_pricing


def run(
    config: Config,
    since: str | None,
    until: str | None,
    fmt: str = "table",
    top: int = 10,
    out: TextIO | None = None,
) -> int:
    """Print the savings over [since, until] (default: this UTC month so far); exit code."""
    out = out or sys.stdout
    today = dt.datetime.now(dt.UTC).date()
    try:
        first = report.parse_day(since) if since else today.replace(day=1)
        last = report.parse_day(until, end=True) if until else today
        if last < first:
            raise ValueError("--until is before --since")
        pricing = load_pricing(config.pricing_file)
        result = report.read(config, pricing, first, last, top)
    except (ValueError, PricingError) as exc:
        print(f"cacheproxy report: {exc}", file=sys.stderr)
        return 2
    if fmt == "json":
        json.dump(result.to_json(), out, indent=2)
        out.write("\n")
    elif fmt == "csv":
        out.write(render.to_csv(result))
    else:
        out.write(render.table(result, str(CacheLayout(config.cache_dir).ledger)))
    return 0
