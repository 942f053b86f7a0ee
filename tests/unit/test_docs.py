"""The docs stay true to the repository: a short README whose test command is the one
CI runs, links and paths that lead somewhere, and every setting in the reference."""

from __future__ import annotations

import html
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from cacheproxy.config import load_config
from cacheproxy.config.fields import Setting
from cacheproxy.config.table import ACCESS, FRESHNESS, SETTINGS, SHARED, TABLES, UPSTREAM

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted(
    [README, ROOT / "CONTRIBUTING.md", *(ROOT / "docs").glob("*.md")],
    key=lambda p: p.relative_to(ROOT).as_posix(),
)
MAX_README_LINES = 250

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
SPAN = re.compile(r"`[^`\n]+`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
# A code span naming a file of this repository: a path under one of its top-level
# directories, or one of its top-level files.
TOP_FILES = ("Dockerfile", "pyproject.toml", "constraints.txt", "README.md", "CONTRIBUTING.md")
REPO_PATH = re.compile(r"^(?:cacheproxy|tests|benchmarks|deploy|docs|\.ci)/[\w./-]*$")


def _prose(text: str) -> str:
    """Markdown without its fenced blocks (their `#` lines are no headings, their
    brackets no links)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation but ``-`` and ``_``
    dropped, spaces as ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, repeated headings numbered as GitHub
    numbers them (``-1``, ``-2``)."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for heading in HEADING.findall(_prose(path.read_text())):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    """The link targets of a file that point into the repository (no scheme)."""
    text = SPAN.sub("", _prose(path.read_text()))
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def test_the_readme_stays_short() -> None:
    lines = README.read_text().count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines: move detail to docs/"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_lead_to_files_and_headings_that_exist(doc: Path) -> None:
    broken = []
    for target in relative_links(doc):
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no such heading in {dest.relative_to(ROOT)}")
    assert not broken, broken


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_paths_the_docs_name_exist(doc: Path) -> None:
    """A code span naming a repository file (``cacheproxy/numbers.py``) names one that
    is there: docs that name a moved module mislead."""
    named = {span.strip("`") for span in SPAN.findall(_prose(doc.read_text()))}
    paths = {p for p in named if REPO_PATH.match(p) or p in TOP_FILES}
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, missing


def test_the_checks_catch_a_broken_link_a_missing_heading_and_a_moved_module(
    tmp_path: Path,
) -> None:
    """The helpers above find what they must (else the tests pass on anything)."""
    (tmp_path / "b.md").write_text("# A title, with `code`\n\n```sh\n# not a heading\n```\n")
    doc = tmp_path / "a.md"
    doc.write_text(
        "[ok](b.md#a-title-with-code) [gone](c.md) [nohead](b.md#not-a-heading) "
        "[web](https://example.com/x.md) `[not](a-link.md)`\n"
    )
    assert relative_links(doc) == ["b.md#a-title-with-code", "c.md", "b.md#not-a-heading"]
    assert anchors(tmp_path / "b.md") == {"a-title-with-code"}
    assert REPO_PATH.match("cacheproxy/config.py") and not (ROOT / "cacheproxy/config.py").exists()


# The names a cacheproxy config file may start a line with: its settings and tables.
CONFIG_NAMES = {
    *(s.key for s in SETTINGS if s.in_file and not s.table),
    *TABLES,
    "shared",
    "upstream",
    "access",
    "freshness",
}


def config_examples(doc: Path) -> list[tuple[str, dict[str, object]]]:
    """The TOML blocks of a file that are cacheproxy config files (every top-level
    name a setting or a table of ours; a containerd hosts.toml is not), with their
    parsed form. Every TOML block must parse."""
    blocks = re.findall(r"^```toml\n(.*?)^```", doc.read_text(), re.M | re.S)
    parsed = [(b, tomllib.loads(b)) for b in blocks]
    return [(b, d) for b, d in parsed if d and set(d) <= CONFIG_NAMES]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_config_examples_load(doc: Path, tmp_path: Path) -> None:
    """An example a reader copies is a config the proxy takes (a key written after a
    table's header belongs to that table, and is refused there)."""
    for i, (block, _) in enumerate(config_examples(doc)):
        path = tmp_path / f"example{i}.toml"
        path.write_text(block)
        load_config(file=path, env={"REGISTRY_PASSWORD": "from the environment"})


def test_a_key_after_a_table_is_no_example(tmp_path: Path) -> None:
    doc = tmp_path / "a.md"
    doc.write_text(
        '```toml\n[[access]]\nsubjects = ["a"]\ntls_cert = "x"\n```\n'
        '```toml\nserver = "https://registry-1.docker.io"\n```\n'
    )
    ((block, parsed),) = config_examples(doc)
    assert parsed == {"access": [{"subjects": ["a"], "tls_cert": "x"}]}
    path = tmp_path / "c.toml"
    path.write_text(block)
    with pytest.raises(ValueError, match="access"):
        load_config(file=path, env={})


# --- the settings reference -------------------------------------------------------


def _sections(text: str) -> dict[str, list[list[str]]]:
    """docs/configuration.md's tables, by the section heading above each: its rows as
    cells (the header and the rule left out)."""
    out: dict[str, list[list[str]]] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("## "):
            section = line[3:]
            out[section] = []
        elif line.startswith("| ") and not line.startswith("| ---"):
            out.setdefault(section, []).append([c.strip() for c in line.strip("|").split("|")])
    for rows in out.values():
        del rows[:1]  # the header row
    return out


def _cell(text: str) -> str:
    """A cell as plain text: no backticks, entities read."""
    return html.unescape(text.replace("`", ""))


CONFIG_DOC = _sections((ROOT / "docs" / "configuration.md").read_text())


def _rows(section_start: str) -> dict[str, list[str]]:
    (rows,) = [rows for title, rows in CONFIG_DOC.items() if title.startswith(section_start)]
    return {_cell(row[0]): row for row in rows}


@pytest.mark.parametrize("s", SETTINGS, ids=lambda s: s.name)
def test_every_setting_has_its_row_with_flag_env_and_default(s: Setting) -> None:
    row = _rows("Settings").get(s.name)
    assert row is not None, f"{s.name} is not in docs/configuration.md"
    _, toml, flag, env, default, _ = (_cell(c) for c in row)
    assert env == s.env
    assert default == s.default_text
    if s.in_file:
        assert toml == s.toml
    if s.flag is not None:
        assert flag.split(" (")[0] == s.flag.option


@pytest.mark.parametrize("s", SHARED, ids=lambda s: s.name)
def test_every_shared_setting_has_its_row(s: Setting) -> None:
    row = _rows("`[shared]`").get(s.name)
    assert row is not None, f"[shared] {s.name} is not in docs/configuration.md"
    _, toml, env, default, _ = (_cell(c) for c in row)
    assert (toml, env, default) == (s.toml, s.env, s.default_text)


@pytest.mark.parametrize(
    ("section", "s"),
    [
        *(("`[[upstream]]`", s) for s in UPSTREAM),
        *(("`[[access]]`", s) for s in ACCESS),
        *(("`[[freshness]]`", s) for s in FRESHNESS),
    ],
    ids=lambda v: v if isinstance(v, str) else v.toml,
)
def test_every_table_key_has_its_row(section: str, s: Setting) -> None:
    row = _rows(section).get(s.key)
    assert row is not None, f"{s.toml} is not in docs/configuration.md"
    assert _cell(row[1]) == s.default_text


# --- the two commands ------------------------------------------------------------


def _readme_block_after(words: str) -> str:
    """The first ```sh block after the README paragraph that starts with ``words``."""
    text = README.read_text()
    start = text.index(words)
    block = re.search(r"```sh\n(.*?)\n```", text[start:], re.S)
    assert block is not None, f"no command after {words!r} in README.md"
    return block.group(1).strip()


def _ci_lines() -> list[str]:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _apt_packages(command: str) -> set[str]:
    words = shlex.split(command)
    at = words.index("install")
    return {w for w in words[at + 1 :] if not w.startswith("-") and w not in (">/dev/null",)}


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    readme = _readme_block_after("Run the tests").split(" && ")
    ci = _ci_lines()
    # The checks: the same lint, type check and suite, word for word.
    checks_at = readme.index("ruff check .")
    assert " && ".join(readme[checks_at:]) == ci[-1]
    # The setup: what the README installs, CI installs too.
    (readme_apt,) = [c for c in readme if c.startswith("apt-get install")]
    (ci_apt,) = [c for c in ci if c.startswith("apt-get install")]
    assert _apt_packages(readme_apt) <= _apt_packages(ci_apt)
    (readme_pip,) = [shlex.split(c) for c in readme[:checks_at] if c.startswith("pip install")]
    ci_pips = [set(shlex.split(line)) for line in ci if " pip install " in f" {line} "]
    assert any(set(readme_pip[1:]) <= words for words in ci_pips)


def test_the_readme_run_command_starts_the_packaged_server() -> None:
    run = _readme_block_after("Run the proxy")
    assert run == "pip install . && cacheproxy serve"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'cacheproxy = "cacheproxy.cli:main"' in pyproject
