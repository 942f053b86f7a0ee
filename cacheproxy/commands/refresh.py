"""``cacheproxy refresh IMAGE...``: a running node asks the upstream what the tags name
now, whatever their freshness or pin (its operator endpoint, ``http/admin.py``)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from ..config import Config


def ask(base_url: str, images: list[str], timeout: float = 120.0) -> list[dict[str, str]]:
    body = json.dumps({"images": images}).encode()
    request = urllib.request.Request(
        base_url.rstrip("/") + "/_cacheproxy/refresh",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        doc = json.loads(resp.read())
    answers = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(answers, list):
        raise ValueError("unexpected answer")
    return answers


def run(config: Config, url: str | None, images: list[str]) -> int:
    """Print each image with the digest it names now; 1 if any could not be asked."""
    try:
        answers = ask(url or config.local_url, images)
    except (OSError, ValueError, urllib.error.URLError) as exc:
        print(f"cacheproxy: cannot refresh on the node: {exc}")
        return 1
    failed = 0
    for answer in answers:
        if "digest" in answer:
            print(f"{answer['image']}: {answer['digest']}")
        else:
            failed += 1
            print(f"{answer.get('image', '?')}: not refreshed: {answer.get('error', '?')}")
    return 1 if failed else 0
