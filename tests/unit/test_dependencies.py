"""The declared dependency floors keep out versions with known vulnerabilities, and
the image's pins (constraints.txt) hold every runtime dependency within them."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

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


CONSTRAINTS = PYPROJECT.parent / "constraints.txt"


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        name, sep, version = text.partition("==")
        assert sep and version.strip(), f"constraints.txt: {line!r} is not name==version"
        pins[canonicalize_name(name.strip())] = Version(version.strip())
    return pins


def _project() -> dict[str, Any]:
    doc: dict[str, Any] = tomllib.loads(PYPROJECT.read_text())
    return doc


@pytest.mark.parametrize("table", ["runtime", "build-system"])
def test_every_dependency_the_image_installs_is_pinned_within_its_floor(table: str) -> None:
    # The image installs constraints.txt as it is (pip install --no-deps -r): a runtime
    # dependency missing from it, or pinned below pyproject.toml's floor, would break
    # the build or ship a version the floor keeps out.
    project = _project()
    wanted = (
        project["project"]["dependencies"]
        if table == "runtime"
        else project["build-system"]["requires"]
    )
    pins = _pins()
    for text in wanted:
        req = Requirement(text)
        pinned = pins.get(canonicalize_name(req.name))
        assert pinned is not None, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pinned, prereleases=True), f"{req.name}=={pinned}: {req}"


def test_the_pins_hold_every_requirement_of_what_they_pin() -> None:
    # pip check, offline: each pinned runtime package's own requirements (as its
    # installed metadata states them, for this Python and platform) are pinned too,
    # at a version they accept; nothing is left for pip to resolve.
    pins = _pins()
    runtime = [Requirement(t).name for t in _project()["project"]["dependencies"]]
    seen: set[str] = set()
    todo = [canonicalize_name(n) for n in runtime]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            dep = canonicalize_name(req.name)
            assert dep in pins, f"{name} needs {req}, not pinned in constraints.txt"
            assert req.specifier.contains(pins[dep], prereleases=True), f"{name} needs {req}"
            todo.append(dep)
    assert seen | {"setuptools"} == set(pins), "constraints.txt pins what nothing needs"
