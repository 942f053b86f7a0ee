"""The declared dependency floors keep out versions with known vulnerabilities."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"

# aiohttp advisories the proxy is exposed to as an HTTP/1 server and client:
# CVE-2025-53643 (request smuggling through trailer sections, fixed in 3.12.14),
# GHSA-4fvr-rgm6-gqmc (pipelined requests queued without limit, 3.14.1) and
# CVE-2026-69244 (fixed in 3.14.3).
AIOHTTP_FIXED = (3, 14, 3)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _floor(package: str) -> tuple[int, ...]:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    for dep in deps:
        found = re.fullmatch(rf"{package}\s*>=\s*([0-9.]+)", dep.strip())
        if found:
            return _version(found.group(1))
    raise AssertionError(f"{package} has no >= floor in pyproject.toml")


def test_aiohttp_floor_excludes_versions_with_smuggling_cves() -> None:
    assert _floor("aiohttp") >= AIOHTTP_FIXED


def test_installed_aiohttp_satisfies_the_floor() -> None:
    assert _version(metadata.version("aiohttp")) >= _floor("aiohttp")
