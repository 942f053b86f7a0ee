"""RFC 9110 section 13, pure: entity-tag lists, comparisons, the evaluation order."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from cacheproxy.conditional import (
    EntityTag,
    Outcome,
    Preconditions,
    digest_tag,
    parse_tags,
    range_applies,
)

DIGEST = "sha256:" + "a" * 64
CURRENT = digest_tag(DIGEST)
OTHER = '"sha256:' + "b" * 64 + '"'


def test_a_digest_is_a_strong_entity_tag() -> None:
    assert str(CURRENT) == f'"{DIGEST}"'
    assert not CURRENT.weak


@pytest.mark.parametrize(
    ("value", "tags"),
    [
        ('"a"', [EntityTag("a")]),
        ('W/"a", "b"', [EntityTag("a", weak=True), EntityTag("b")]),
        # Section 5.6.1: empty list elements and OWS around them are accepted.
        (' ,"a" ,\t, "b",', [EntityTag("a"), EntityTag("b")]),
        ('"a,b"', [EntityTag("a,b")]),  # a comma is an etagc
        ('""', [EntityTag("")]),
        ("", []),
    ],
)
def test_entity_tag_lists_parse(value: str, tags: list[EntityTag]) -> None:
    assert parse_tags(value) == tags


@pytest.mark.parametrize(
    "value",
    ["a", 'w/"a"', '"a" "b"', '"a', '"a b"', '"a"x', 'W/ "a"', '"\x7f"', "*"],
)
def test_malformed_entity_tag_lists_are_none(value: str) -> None:
    assert parse_tags(value) is None


def test_strong_and_weak_comparison() -> None:
    """Section 8.8.3.2's table."""
    weak1, weak2, strong1, strong2 = (
        EntityTag("1", weak=True),
        EntityTag("2", weak=True),
        EntityTag("1"),
        EntityTag("2"),
    )
    assert not weak1.strong_match(weak1) and weak1.weak_match(weak1)
    assert not weak1.strong_match(weak2) and not weak1.weak_match(weak2)
    assert not weak1.strong_match(strong1) and weak1.weak_match(strong1)
    assert strong1.strong_match(strong1) and strong1.weak_match(strong1)
    assert not strong1.strong_match(strong2)


def conditions(*pairs: tuple[str, str]) -> Preconditions:
    return Preconditions.of(CIMultiDict(pairs))


@pytest.mark.parametrize(
    ("pairs", "outcome"),
    [
        ((), Outcome.SERVE),
        ((("If-None-Match", f'"{DIGEST}"'),), Outcome.NOT_MODIFIED),
        ((("If-None-Match", f'W/"{DIGEST}"'),), Outcome.NOT_MODIFIED),
        ((("If-None-Match", "*"),), Outcome.NOT_MODIFIED),
        ((("If-None-Match", OTHER),), Outcome.SERVE),
        # Two lines of one field are one list (section 5.3).
        ((("If-None-Match", OTHER), ("If-None-Match", f'"{DIGEST}"')), Outcome.NOT_MODIFIED),
        ((("If-None-Match", DIGEST),), Outcome.SERVE),  # unquoted: names no tag
        ((("If-Match", f'"{DIGEST}"'),), Outcome.SERVE),
        ((("If-Match", "*"),), Outcome.SERVE),
        ((("If-Match", f'{OTHER}, "{DIGEST}"'),), Outcome.SERVE),
        ((("If-Match", OTHER),), Outcome.FAILED),
        ((("If-Match", f'W/"{DIGEST}"'),), Outcome.FAILED),  # strong comparison
        ((("If-Match", "garbage"),), Outcome.FAILED),
        # Section 13.2.2: If-Match first, then If-None-Match.
        ((("If-Match", OTHER), ("If-None-Match", f'"{DIGEST}"')), Outcome.FAILED),
        ((("If-Match", "*"), ("If-None-Match", "*")), Outcome.NOT_MODIFIED),
        # No modification date: the date conditions are ignored (13.1.3, 13.1.4).
        ((("If-Modified-Since", "Sun, 06 Nov 2094 08:49:37 GMT"),), Outcome.SERVE),
        ((("If-Unmodified-Since", "Sun, 06 Nov 1994 08:49:37 GMT"),), Outcome.SERVE),
    ],
)
def test_preconditions_in_their_order(pairs: tuple[tuple[str, str], ...], outcome: Outcome) -> None:
    assert conditions(*pairs).evaluate(CURRENT) is outcome


def test_only_the_entity_tag_conditions_count_as_present() -> None:
    assert not conditions(("If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT"))
    assert conditions(("If-None-Match", "*"))


@pytest.mark.parametrize(
    ("if_range", "applies"),
    [
        (None, True),
        (f'"{DIGEST}"', True),
        (f' "{DIGEST}"\t', True),
        (OTHER, False),
        (f'W/"{DIGEST}"', False),  # a weak tag never matches strongly
        ("Sun, 06 Nov 1994 08:49:37 GMT", False),  # no Last-Modified to match
        (f'"{DIGEST}", "{DIGEST}"', False),  # one validator, not a list
        (DIGEST, False),
    ],
)
def test_if_range(if_range: str | None, applies: bool) -> None:
    headers = CIMultiDict({"Range": "bytes=10-"})
    if if_range is not None:
        headers["If-Range"] = if_range
    assert range_applies(headers, CURRENT) is applies
