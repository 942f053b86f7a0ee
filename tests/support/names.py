"""Names no other test uses: each test pushes under repositories of its own."""

from __future__ import annotations

import uuid


def unique(prefix: str) -> str:
    """A repository name under ``prefix`` that no other test (or run) uses."""
    return f"{prefix}/{uuid.uuid4().hex[:10]}"
