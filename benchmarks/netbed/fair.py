"""Max-min fair sharing of links between flows (what TCP on equal round trips approaches)."""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence


def max_min(links: Sequence[tuple[int, ...]], capacity: Sequence[float]) -> list[float]:
    """Max-min fair rates of flows that each cross the links listed for it.

    Progressive filling: the link with the smallest fair share (remaining capacity
    over unfrozen flows) fixes its flows at that share; removing them can only raise
    the other links' shares, so a heap of shares gives the next bottleneck.
    """
    members: list[list[int]] = [[] for _ in capacity]
    for i, own in enumerate(links):
        for link in own:
            members[link].append(i)
    left = list(capacity)
    count = [len(m) for m in members]
    share = [left[k] / count[k] if count[k] else math.inf for k in range(len(capacity))]
    heap = [(share[k], k) for k in range(len(capacity)) if count[k]]
    heapq.heapify(heap)
    rates: list[float | None] = [None] * len(links)
    while heap:
        value, link = heapq.heappop(heap)
        if value != share[link] or count[link] == 0:
            continue
        for i in members[link]:
            if rates[i] is not None:
                continue
            rates[i] = value
            for other in links[i]:
                if other == link:
                    continue
                left[other] -= value
                count[other] -= 1
                if count[other]:
                    share[other] = max(left[other], 0.0) / count[other]
                    heapq.heappush(heap, (share[other], other))
        count[link] = 0
    return [r if r is not None else 0.0 for r in rates]
