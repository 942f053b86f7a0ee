"""Where a server's CPU goes: py-spy sampling a running process, and its top items.

py-spy (``pip install py-spy``) samples the Python stacks of a process from outside,
so the server runs unmodified. Idle threads (the loop waiting in epoll, a pool
thread waiting for work) are left out: what remains is time spent on a CPU or in a
system call (frames that only wait, ``IDLE``, are dropped too). :func:`top_items`
ranks functions by their own samples (the frame at the top of the stack) and says
what share of the busy samples each took.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
from collections import Counter
from pathlib import Path
from types import TracebackType

from .anchors import clean_env

PY_SPY = "py-spy"
RATE = 250
#: Frames at the top of a stack that mean "waiting", whatever py-spy thought: a pool
#: thread waiting for work, the loop waiting in epoll.
IDLE = frozenset({"_worker (thread.py)", "EpollSelector.select (selectors.py)"})
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


class Profiler:
    """``py-spy record`` on ``pid`` while the block runs; raw stacks into ``out``."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid = pid
        self.out = out
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Profiler:
        if shutil.which(PY_SPY) is None:
            raise RuntimeError("py-spy not found: pip install py-spy")
        argv = [PY_SPY, "record", "--pid", str(self.pid), "--format", "raw"]
        argv += ["--rate", str(RATE), "--output", str(self.out)]
        self._proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=clean_env(),
        )
        await asyncio.sleep(0.5)  # py-spy attaches
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        # SIGINT makes py-spy write what it sampled; kill it by PID if it lingers.
        os.kill(proc.pid, signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()


def top_items(raw: Path, n: int = 12) -> list[str]:
    """The ``n`` functions with the most samples of their own, as lines of text."""
    own: Counter[str] = Counter()
    total = 0
    if not raw.exists():
        return ["(no samples: py-spy wrote nothing)"]
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        top = _name(stack.split(";")[-1])
        if top in IDLE:
            continue
        total += count
        own[top] += count
    if not total:
        return ["(no samples)"]
    return [f"{100 * c / total:.1f}% {name}" for name, c in own.most_common(n)]


def _name(frame: str) -> str:
    """``write (asyncio/selector_events.py:123)`` -> ``write (selector_events.py)``."""
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    return f"{m['func']} ({Path(m['file']).name})"


def inclusive_items(raw: Path, n: int = 8, within: str = "cacheproxy/") -> list[str]:
    """The ``n`` functions of files under ``within`` on the most stacks (own time
    plus what they called), as lines of text."""
    seen: Counter[str] = Counter()
    total = 0
    if not raw.exists():
        return []
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        frames = stack.split(";")
        if _name(frames[-1]) in IDLE:
            continue
        total += int(count_s)
        names = {_name(f) for f in frames if within in f}
        for name in names:
            seen[name] += int(count_s)
    if not total:
        return []
    return [f"{100 * c / total:.1f}% {name}" for name, c in seen.most_common(n)]
