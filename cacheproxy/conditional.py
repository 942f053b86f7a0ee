"""Conditional requests (RFC 9110 section 13) against a digest's entity tag. Pure.

A manifest's or blob's entity tag is its digest, strong (``"sha256:..."``): the
bytes behind a digest never change. Nothing here carries a Last-Modified (a blob
or a manifest has no modification date worth the name), so the date conditions
are ignored as section 13.1.3 and 13.1.4 say ("MUST ignore ... if the resource
does not have a modification date available"), and a date in If-Range never
matches (section 13.1.5).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from multidict import MultiMapping

# Section 8.8.3: entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE, etagc being any visible
# octet but DQUOTE, or obs-text (aiohttp hands those on as non-ASCII characters).
_TAG = re.compile(r'(W/)?"([^\x00-\x20"\x7f]*)"')
# OWS (section 5.6.3) is spaces and tabs.
_OWS = " \t"


@dataclass(frozen=True, slots=True)
class EntityTag:
    """An entity tag: its opaque part, and whether it is weak."""

    opaque: str
    weak: bool = False

    def __str__(self) -> str:
        return f'{"W/" if self.weak else ""}"{self.opaque}"'

    def strong_match(self, other: EntityTag) -> bool:
        """Section 8.8.3.2: both strong and the same characters."""
        return not self.weak and not other.weak and self.opaque == other.opaque

    def weak_match(self, other: EntityTag) -> bool:
        """Section 8.8.3.2: the same characters, weak or not."""
        return self.opaque == other.opaque


def digest_tag(digest: str) -> EntityTag:
    """The strong entity tag of the content named by ``digest``."""
    return EntityTag(digest)


def parse_tags(value: str) -> list[EntityTag] | None:
    """``#entity-tag`` (section 5.6.1: empty elements are allowed); None when malformed."""
    tags: list[EntityTag] = []
    pos, end = 0, len(value)
    while True:
        while pos < end and value[pos] in " \t,":
            pos += 1
        if pos == end:
            return tags
        m = _TAG.match(value, pos)
        if m is None:
            return None
        tags.append(EntityTag(m[2], m[1] is not None))
        pos = m.end()
        while pos < end and value[pos] in _OWS:
            pos += 1
        if pos < end and value[pos] != ",":
            return None


class Outcome(enum.Enum):
    """What the preconditions make of a request (section 13.2.2)."""

    SERVE = "serve"  # perform the method as if there were no conditions
    NOT_MODIFIED = "not modified"  # 304: GET or HEAD, If-None-Match matched
    FAILED = "failed"  # 412 Precondition Failed


@dataclass(frozen=True, slots=True)
class Preconditions:
    """A request's If-Match and If-None-Match (each field's lines joined, section 5.3)."""

    if_match: str | None = None
    if_none_match: str | None = None

    @classmethod
    def of(cls, headers: MultiMapping[str]) -> Preconditions:
        """The preconditions a request's header fields carry."""
        return cls(_field(headers, "If-Match"), _field(headers, "If-None-Match"))

    def __bool__(self) -> bool:
        return self.if_match is not None or self.if_none_match is not None

    def evaluate(self, current: EntityTag) -> Outcome:
        """The outcome for a GET or HEAD of a representation that exists and whose
        entity tag is ``current``, in section 13.2.2's order. (The caller makes sure
        the request without conditions would be a 2xx: section 13.2.1 ignores them
        otherwise.)"""
        # Step 1 (13.1.1): If-Match, strong comparison; "*" holds for any current
        # representation. A field that does not parse names no tag, and so fails:
        # the client asked for a guarantee nobody can give it.
        if self.if_match is not None and not _any(self.if_match, current, strong=True):
            return Outcome.FAILED
        # Step 2: If-Unmodified-Since is ignored without a modification date (13.1.4).
        # Step 3 (13.1.2): If-None-Match, weak comparison; "*" matches any current
        # representation. A field that does not parse names no tag: the body is sent.
        if self.if_none_match is not None and _any(self.if_none_match, current, strong=False):
            return Outcome.NOT_MODIFIED  # for GET and HEAD, the only methods served
        # Step 4: If-Modified-Since is ignored without a modification date (13.1.3).
        return Outcome.SERVE


def range_applies(headers: MultiMapping[str], current: EntityTag) -> bool:
    """Step 5 of section 13.2.2: whether a GET's Range is honoured, given If-Range.

    Section 13.1.5: without If-Range, yes; with an entity tag, only when it matches
    ``current`` by strong comparison (a weak one never does); otherwise the whole
    representation is sent. A date matches only a Last-Modified that is a strong
    validator, and blobs carry no Last-Modified at all: a date never matches, nor
    does anything that is not one entity tag.
    """
    value = _field(headers, "If-Range")
    if value is None:
        return True
    m = _TAG.fullmatch(value.strip(_OWS))
    return m is not None and m[1] is None and m[2] == current.opaque and not current.weak


def _any(value: str, current: EntityTag, *, strong: bool) -> bool:
    if value.strip(_OWS) == "*":
        return True
    tags = parse_tags(value) or []
    if strong:
        return any(tag.strong_match(current) for tag in tags)
    return any(tag.weak_match(current) for tag in tags)


def _field(headers: MultiMapping[str], name: str) -> str | None:
    """A field's value, its lines joined by commas (section 5.3), or None if absent."""
    lines = headers.getall(name, [])
    return ", ".join(lines) if lines else None
