"""``cacheproxy prefetch --cluster IMAGE...``: a running node of a cluster brings each
image's blobs onto their owners and ``--copies`` more nodes (its operator endpoint,
``http/preheat.py``), a line for each (blob, node) as it is kept."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

from ..config import Config


def ask(
    base_url: str, images: list[str], copies: int, platform: str | None, referrers: bool
) -> Iterator[dict[str, object]]:
    """The node's lines as they come (no total timeout: a preheat takes as long as the
    images do; a node that stops sending for ``READ`` seconds is given up)."""
    body = {"images": images, "copies": copies, "platform": platform, "referrers": referrers}
    request = urllib.request.Request(
        base_url.rstrip("/") + "/_cacheproxy/preheat",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=READ) as resp:
        for raw in resp:
            if raw.strip():
                line = json.loads(raw)
                if isinstance(line, dict):
                    yield line


#: Seconds without a line from the node before the preheat is given up (the node
#: sends one a second for each node working on a blob).
READ = 120.0


def run(
    config: Config,
    url: str | None,
    images: list[str],
    copies: int,
    platform: str | None,
    referrers: bool,
) -> int:
    """Print the preheat's progress; 1 if any blob did not reach a node it was for."""
    try:
        for line in ask(url or config.local_url, images, copies, platform, referrers):
            print(_text(line), flush=True)
            if line.get("done"):
                return 1 if line.get("failed") else 0
    except (OSError, ValueError, urllib.error.URLError) as exc:
        print(f"cacheproxy: cannot preheat on the node: {exc}")
        return 1
    print("cacheproxy: the node stopped before the preheat was done")
    return 1


def _text(line: dict[str, object]) -> str:
    if "blobs" in line:
        return f"{line['image']}: {line['blobs']} blobs, {line['bytes']} bytes"
    if "image" in line:
        return f"{line['image']}: failed: {line.get('error', '?')}"
    if "blob" in line:
        verdict = "kept" if line.get("ok") else f"failed: {line.get('error', '?')}"
        return f"  {line['blob']} on {line['node']}: {verdict}"
    if line.get("done"):
        return f"done, {line.get('failed', 0)} failed"
    return json.dumps(line)
