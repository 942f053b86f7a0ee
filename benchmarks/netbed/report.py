"""The bed's table: rollouts grouped by system and node count, as markdown."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from .bed import LABELS, SYSTEMS, Rollout


def _span(values: Sequence[float], digits: int) -> str:
    lo, hi = min(values), max(values)
    if f"{lo:.{digits}f}" == f"{hi:.{digits}f}":
        return f"{lo:.{digits}f}"
    return f"{statistics.median(values):.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def groups(rollouts: Sequence[Rollout]) -> dict[tuple[str, int], list[Rollout]]:
    out: dict[tuple[str, int], list[Rollout]] = {}
    for r in sorted(rollouts, key=lambda r: (r.nodes, SYSTEMS.index(r.system))):
        out.setdefault((r.system, r.nodes), []).append(r)
    return out


def table(rollouts: Sequence[Rollout], image_size: int) -> str:
    """The markdown table: wall, ratio to one node alone, upstream and busiest upload."""
    grouped = groups(rollouts)
    alone = [r.wall for r in grouped.get(("alone", 1), [])]
    base = statistics.median(alone) if alone else None
    lines = [
        "| system | nodes | rollout wall s | vs one node alone | upstream bytes / image "
        "| busiest node upload / image | clients verified | busiest node CPU s "
        "| machine's CPUs busy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (system, n), rows in grouped.items():
        walls = [r.wall for r in rows]
        ratio = f"{statistics.median(walls) / base:.1f}x" if base else "-"
        upstream = [r.upstream / image_size for r in rows]
        busiest = [max(r.uploads) / image_size for r in rows]
        verified = sum(r.verified for r in rows)
        total = sum(len(r.clients) for r in rows)
        cpu = [max(r.cpu) for r in rows if r.cpu]
        busy = [r.busy * 100 for r in rows]
        lines.append(
            f"| {LABELS[system]} | {n} | {_span(walls, 1)} | {ratio} | {_span(upstream, 2)} "
            f"| {_span(busiest, 2)} | {verified} / {total} "
            f"| {_span(cpu, 1) if cpu else '-'} | {_span(busy, 0)}% |"
        )
    return "\n".join(lines) + "\n"


def as_json(rollouts: Sequence[Rollout]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rollouts]


def from_json(items: Sequence[dict[str, Any]]) -> list[Rollout]:
    return [Rollout(**item) for item in items]
