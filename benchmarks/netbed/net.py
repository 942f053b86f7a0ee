"""The bed's network: namespaces, veth pairs on a bridge, ``tc`` limits, byte counters.

Nothing touches the host's own network namespace. A *switch* namespace holds a
bridge; every endpoint (one per node, one for the upstream) is a namespace of its
own joined to that bridge by a veth pair::

    <tag>-n3 (node 3)                <tag>-sw (switch)
    [<tag>-n3] 10.231.0.4/24 ---- [<tag>-p3] -- bridge <tag>-br -- [<tag>-pu] ---- [<tag>-up]
      tbf: node 3's upload          tbf: node 3's download               upstream egress: tbf

A node's upload is limited on its own veth's egress (inside its namespace) and its
download on the egress of its switch port (the bridge sends into the node there);
the upstream's egress on its own veth. So the node's veth counters are exactly its
traffic with the rest of the bed: ``tx`` what it sent to other nodes (and the upstream),
``rx`` what it received; traffic between a node and its own client stays on the
namespace's loopback and is not counted.

Every name starts with ``<tag>`` = ``cpbed`` + the creating process's PID in base 36
(a Linux interface name has at most 15 characters), so two beds never collide, and
:func:`cleanup` removes leftovers by that prefix.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

PREFIX = "cpbed"
SUBNET = "10.231.0"
UPSTREAM_HOST = 254
#: Queueing a tbf allows before it drops (the kernel's ``latency`` parameter).
TBF_LATENCY = "50ms"
IP_TIMEOUT = 20.0
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def tag_for(pid: int) -> str:
    """``cpbed`` + ``pid`` in base 36: at most 10 characters for any Linux PID."""
    digits = ""
    while True:
        pid, rest = divmod(pid, 36)
        digits = _DIGITS[rest] + digits
        if pid == 0:
            return PREFIX + digits


def pid_of(tag: str) -> int | None:
    """The PID a tag was made from, or None if ``tag`` is not one of ours."""
    if not tag.startswith(PREFIX) or not tag[len(PREFIX) :].isalnum():
        return None
    try:
        return int(tag[len(PREFIX) :], 36)
    except ValueError:
        return None


def rate_bytes(rate: str) -> float:
    """``tc`` rate syntax (``400mbit``, ``40Mbit``, ``1gbit``, ``500kbit``) in bytes/s."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)(bit|bps)", rate.strip().lower())
    if match is None:
        raise ValueError(f"rate {rate!r}: expected e.g. 400mbit")
    value = float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[match.group(2)]
    # tc: "bit" is bits per second, "bps" bytes per second.
    return value / 8 if match.group(3) == "bit" else value


def run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run an ``ip``/``tc`` command, bounded in time; raise with its stderr on failure."""
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=IP_TIMEOUT, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


@dataclass(frozen=True)
class Endpoint:
    """A namespace on the bridge: a node or the upstream."""

    name: str
    netns: str
    ifname: str
    port: str
    address: str

    def exec(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this namespace (``ip netns exec`` execs it: same PID)."""
        return ["ip", "netns", "exec", self.netns, *argv]


@dataclass(frozen=True)
class Counters:
    """A veth's kernel byte counters (headers included)."""

    tx: int
    rx: int

    def __sub__(self, other: Counters) -> Counters:
        return Counters(self.tx - other.tx, self.rx - other.rx)


class Network:
    """``nodes`` node namespaces and an upstream on one bridge, with ``tc`` limits.

    :meth:`create` builds it (tearing down what it built if a step fails);
    :meth:`destroy` removes every namespace it made, by name, and is idempotent.
    """

    def __init__(self, nodes: int, rate: str, upstream_rate: str, tag: str | None = None) -> None:
        if not 1 <= nodes <= 250:
            raise ValueError("nodes: 1 to 250 on one /24")
        self.tag = tag or tag_for(os.getpid())
        self.rate = rate
        self.upstream_rate = upstream_rate
        self.switch = f"{self.tag}-sw"
        self.bridge = f"{self.tag}-br"
        self.nodes = [self._endpoint(f"n{i}", f"p{i}", i + 1) for i in range(nodes)]
        self.upstream = self._endpoint("up", "pu", UPSTREAM_HOST)
        self.created: list[str] = []

    def _endpoint(self, name: str, port: str, host: int) -> Endpoint:
        return Endpoint(
            name=name,
            netns=f"{self.tag}-{name}",
            ifname=f"{self.tag}-{name}",
            port=f"{self.tag}-{port}",
            address=f"{SUBNET}.{host}",
        )

    @property
    def namespaces(self) -> list[str]:
        return [self.switch, self.upstream.netns, *(n.netns for n in self.nodes)]

    def create(self) -> None:
        try:
            self._add_netns(self.switch)
            run(["ip", "-n", self.switch, "link", "add", self.bridge, "type", "bridge"])
            run(["ip", "-n", self.switch, "link", "set", self.bridge, "up"])
            self._attach(self.upstream, up=self.upstream_rate, down=None)
            for node in self.nodes:
                self._attach(node, up=self.rate, down=self.rate)
        except BaseException:
            self.destroy()
            raise

    def _add_netns(self, name: str) -> None:
        run(["ip", "netns", "add", name])
        self.created.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _attach(self, ep: Endpoint, up: str | None, down: str | None) -> None:
        self._add_netns(ep.netns)
        veth = ["type", "veth", "peer", "name", ep.ifname, "netns", ep.netns]
        run(["ip", "-n", self.switch, "link", "add", ep.port, *veth])
        run(["ip", "-n", self.switch, "link", "set", ep.port, "master", self.bridge, "up"])
        run(["ip", "-n", ep.netns, "addr", "add", f"{ep.address}/24", "dev", ep.ifname])
        run(["ip", "-n", ep.netns, "link", "set", ep.ifname, "up"])
        if up is not None:
            self._limit(ep.netns, ep.ifname, up)
        if down is not None:
            self._limit(self.switch, ep.port, down)

    @staticmethod
    def _limit(netns: str, dev: str, rate: str) -> None:
        # A token bucket of 5 ms at the rate (at least 64 KiB, so GSO packets pass whole).
        burst = max(64 * 1024, int(rate_bytes(rate) * 0.005))
        tbf = ["tbf", "rate", rate, "burst", str(burst), "latency", TBF_LATENCY]
        run(["tc", "-n", netns, "qdisc", "add", "dev", dev, "root", *tbf])

    def counters(self, ep: Endpoint) -> Counters:
        """``ep``'s veth counters, read inside its namespace."""
        out = run(["ip", "-j", "-s", "-n", ep.netns, "link", "show", "dev", ep.ifname]).stdout
        stats = json.loads(out)[0]["stats64"]
        return Counters(int(stats["tx"]["bytes"]), int(stats["rx"]["bytes"]))

    def all_counters(self) -> dict[str, Counters]:
        return {ep.name: self.counters(ep) for ep in [self.upstream, *self.nodes]}

    def destroy(self) -> None:
        remove_namespaces([n for n in self.created if n in list_namespaces()])
        self.created.clear()


def list_namespaces() -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def remove_namespaces(names: Sequence[str]) -> None:
    """End the processes left in ``names`` (ours: the bed started them), then delete them.

    Deleting the switch namespace takes the bridge and every veth pair with it.
    """
    for name in names:
        pids = run(["ip", "netns", "pids", name], check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    for name in names:
        run(["ip", "netns", "del", name], check=False)


def leftovers(everything: bool = False) -> list[str]:
    """Namespaces of beds whose process is gone (or of every bed, with ``everything``)."""
    out = []
    for name in list_namespaces():
        tag = name.rpartition("-")[0]
        pid = pid_of(tag)
        if pid is None:
            continue
        if everything or not _alive(pid):
            out.append(name)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup(everything: bool = False) -> list[str]:
    """Remove leftover bed namespaces (see :func:`leftovers`); return their names."""
    names = leftovers(everything)
    remove_namespaces(names)
    return names
