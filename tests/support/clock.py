"""A clock for code that takes one (``clock: Callable[[], float]``): it says what the
test set, and moves only when the test moves it."""

from __future__ import annotations


class Clock:
    """``clock()`` is ``clock.now``; a test moves time with ``clock.now += seconds``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
