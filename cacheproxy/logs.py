"""Log lines that cannot flood the disk: every line at INFO and above is rate-limited.

An attacker who makes the proxy fail on purpose (made-up digests, broken
connections) must not be able to fill the log volume. Each kind of message (its
logger and format string) may log a burst (a larger one at INFO, where a busy pull
says more), then one line per interval; what was held back is counted and said
with the next line of that kind.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

BURST = 10
INTERVAL = 10.0
# Kinds of message remembered (the least recently seen go first).
MAX_KINDS = 1024
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RateLimit(logging.Filter):
    """Lets through ``burst`` records of a kind, then one per ``interval`` seconds."""

    def __init__(
        self,
        burst: int = BURST,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._burst = burst
        self._interval = interval
        self._clock = clock
        # kind -> (tokens left, time of the last refill, records held back)
        self._kinds: OrderedDict[tuple[str, object], tuple[float, float, int]] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO:
            return True
        burst = float(self._burst if record.levelno >= logging.WARNING else self._burst * 5)
        kind = (record.name, record.msg)
        now = self._clock()
        tokens, last, held = self._kinds.get(kind, (burst, now, 0))
        tokens = min(burst, tokens + (now - last) / self._interval)
        passed = tokens >= 1.0
        if passed:
            tokens -= 1.0
            if held:
                record.msg = f"{record.msg} (and {held} more like it held back)"
                held = 0
        else:
            held += 1
        self._kinds[kind] = (tokens, now, held)
        self._kinds.move_to_end(kind)
        if len(self._kinds) > MAX_KINDS:
            self._kinds.popitem(last=False)
        return passed


def configure(level: str) -> None:
    """The process's logging: one stream handler, rate-limited from INFO up."""
    logging.basicConfig(level=level.upper(), format=FORMAT)
    limiter = RateLimit()
    for handler in logging.getLogger().handlers:
        handler.addFilter(limiter)
