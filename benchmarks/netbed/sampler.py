"""Each veth's kernel counters sampled a few times a second while a step runs, for
the highest rate a node held over a window (``peaks``): what a bandwidth limit is
measured against, where a whole run's average also counts the idle seconds."""

from __future__ import annotations

import threading
import time

from .net import Counters, Network

#: Seconds between samples, and the window a peak rate is held over.
EVERY = 0.2
WINDOW = 2.0


class Sampler:
    """A thread reading ``net``'s counters every :data:`EVERY` seconds until stopped."""

    def __init__(self, net: Network) -> None:
        self._net = net
        self.samples: list[tuple[float, dict[str, Counters]]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="netbed-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._done.is_set():
            self.samples.append((time.monotonic(), self._net.all_counters()))
            self._done.wait(EVERY)

    def peaks(self, name: str, window: float = WINDOW) -> Counters:
        """The most bytes a second ``name`` sent and received over any ``window``."""
        tx = rx = 0.0
        j = 0
        for i, (t, now) in enumerate(self.samples):
            while j < i and t - self.samples[j][0] > window:
                j += 1
            # The span from the oldest sample still inside the window.
            if j < i and t - self.samples[j][0] >= window * 0.9:
                then = self.samples[j][1][name]
                spent = t - self.samples[j][0]
                tx = max(tx, (now[name].tx - then.tx) / spent)
                rx = max(rx, (now[name].rx - then.rx) / spent)
        return Counters(int(tx), int(rx))
