"""``cacheproxy peers``: a running node's view of its cluster, as text or JSON."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from urllib.parse import urlencode

from ..config import Config


def fetch_view(base_url: str, key: str | None, timeout: float = 5.0) -> dict[str, object]:
    url = base_url.rstrip("/") + "/_cacheproxy/peers"
    if key:
        url += "?" + urlencode({"key": key})
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        doc = json.loads(resp.read())
    if not isinstance(doc, dict):
        raise ValueError("unexpected answer")
    return doc


def render(view: dict[str, object]) -> str:
    if not view.get("peer_mode"):
        return "peer mode is off on this node"
    lines = [f"self: {view['self']}", "members:"]
    members = view.get("members")
    if isinstance(members, dict):
        for url, health in members.items():
            lines.append(f"  {url:40} {health}")
    if "key" in view:
        ranking = view.get("ranking")
        ask = view.get("ask_first")
        lines.append(f"key: {view['key']}")
        if isinstance(ranking, list):
            lines.append("  ranking (owner first): " + ", ".join(str(m) for m in ranking))
        if isinstance(ask, list):
            asked = ", ".join(str(m) for m in ask) or "nobody (it is the owner)"
            lines.append("  this node asks: " + asked)
    stats = view.get("stats")
    if isinstance(stats, dict):
        lines.append("stats: " + ", ".join(f"{k}={v}" for k, v in stats.items()))
    return "\n".join(lines)


def run(config: Config, url: str | None, key: str | None, as_json: bool) -> int:
    try:
        view = fetch_view(url or config.local_url, key)
    except (OSError, ValueError, urllib.error.URLError) as exc:
        print(f"cacheproxy: cannot reach the node: {exc}")
        return 1
    print(json.dumps(view, indent=2) if as_json else render(view))
    return 0
