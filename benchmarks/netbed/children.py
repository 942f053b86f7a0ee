"""The bed's child processes: reading a client's answer, stopping it, and the CPU
time a process (or the whole machine) spent, from /proc."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import time
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` (its threads included); 0 if gone."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return 0.0
    # The command name (field 2) may hold spaces: the fields after it follow ")".
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot (/proc/stat)."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of all CPUs that were busy between two :func:`machine_jiffies`."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


def read_line(proc: subprocess.Popen[bytes], deadline: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
    if not ready:
        raise TimeoutError("a client said nothing before the deadline")
    return proc.stdout.readline().decode(errors="replace")


def read_result(proc: subprocess.Popen[bytes], deadline: float) -> dict[str, Any]:
    try:
        line = read_line(proc, deadline)
    except TimeoutError:
        return {"ok": False, "failures": ["no result before the deadline"]}
    try:
        parsed: dict[str, Any] = json.loads(line)
    except json.JSONDecodeError:
        return {"ok": False, "failures": [f"client said {line!r}: {stderr_tail(proc)}"]}
    return parsed


def stderr_tail(proc: subprocess.Popen[bytes]) -> str:
    _stop(proc)
    with contextlib.suppress(ValueError, OSError):
        assert proc.stderr is not None
        return proc.stderr.read().decode(errors="replace")[-2000:]
    return ""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a client we started, by its PID, and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def end_process(proc: subprocess.Popen[bytes]) -> None:
    """Stop a client and close its pipes."""
    _stop(proc)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError, ValueError):
                pipe.close()
