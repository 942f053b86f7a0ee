"""One verifying client, run inside a node's namespace by the bed.

    ip netns exec NS python3 -m benchmarks.netbed.client BASE NAME TAG DIGEST [SECONDS]

Prints ``ready``, waits for a line on stdin (the bed releases every client at once),
then pulls ``NAME:TAG`` from ``BASE`` like containerd: the manifest by tag (checked
against ``DIGEST``), then its config and layers three at a time, reading every byte
and checking each blob's size and sha256 against the manifest. Prints one JSON line:
``ok``, ``failures``, ``bytes``, and ``start``/``end`` on ``CLOCK_MONOTONIC``, which
every namespace shares, so the bed can line the clients up.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from typing import Any

import aiohttp

# Each result also carries ``blobs``: per digest, the monotonic clock of the request,
# its first byte and its end.
ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
PARALLEL = 3
CHUNK = 1 << 20


async def blob(
    http: aiohttp.ClientSession, base: str, name: str, desc: dict[str, Any], times: list[float]
) -> tuple[int, str | None]:
    """GET one blob, checking its size and sha256; ``times`` gets the monotonic clock
    of its request, its first byte and its end."""
    digest, size = str(desc["digest"]), int(desc["size"])
    hasher = hashlib.sha256()
    got = 0
    times.append(time.monotonic())
    try:
        async with http.get(f"{base}/v2/{name}/blobs/{digest}") as resp:
            if resp.status != 200:
                return 0, f"{digest[:19]}: HTTP {resp.status}"
            async for chunk in resp.content.iter_chunked(CHUNK):
                if not got:
                    times.append(time.monotonic())
                hasher.update(chunk)
                got += len(chunk)
        times.append(time.monotonic())
    except (aiohttp.ClientError, TimeoutError) as exc:
        return got, f"{digest[:19]}: {type(exc).__name__}: {exc}"
    if got != size:
        return got, f"{digest[:19]}: {got} bytes, expected {size}"
    if "sha256:" + hasher.hexdigest() != digest:
        return got, f"{digest[:19]}: wrong digest"
    return got, None


async def pull(base: str, name: str, tag: str, digest: str, budget: float) -> dict[str, Any]:
    failures: list[str] = []
    total = 0
    blobs: dict[str, list[float]] = {}
    timeout = aiohttp.ClientTimeout(total=budget, sock_connect=10, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as http:
        async with http.get(f"{base}/v2/{name}/manifests/{tag}", headers={"Accept": ACCEPT}) as r:
            body = await r.read()
            if r.status != 200:
                return {"failures": [f"manifest: HTTP {r.status}"], "bytes": 0}
        if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            return {"failures": ["manifest: wrong digest"], "bytes": len(body)}
        doc = json.loads(body)
        gate = asyncio.Semaphore(PARALLEL)

        async def one(desc: dict[str, Any]) -> None:
            nonlocal total
            async with gate:
                times = blobs.setdefault(str(desc["digest"]), [])
                got, err = await blob(http, base, name, desc, times)
            total += got
            if err is not None:
                failures.append(err)

        await asyncio.gather(*(one(d) for d in [doc["config"], *doc["layers"]]))
    return {"failures": failures, "bytes": total + len(body), "blobs": blobs}


def main(argv: list[str]) -> int:
    base, name, tag, digest = argv[:4]
    budget = float(argv[4]) if len(argv) > 4 else 600.0
    print("ready", flush=True)
    if not sys.stdin.readline():
        return 2
    start = time.monotonic()
    try:
        result = asyncio.run(asyncio.wait_for(pull(base, name, tag, digest, budget), budget))
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        result = {"failures": [f"{type(exc).__name__}: {exc}"], "bytes": 0}
    result.update(ok=not result["failures"], start=start, end=time.monotonic())
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
