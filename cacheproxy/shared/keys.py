"""Pure parts of the shared tier: object keys, and the XML S3 answers with.

Objects are keyed by digest alone, ``<prefix>/blobs/<algorithm>/<hex>``, blobs and
manifests alike (a manifest is a blob too), as distribution lays out its storage.
Tags are never written: their freshness belongs to each proxy.
"""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote
from xml.sax.saxutils import escape

from ..numbers import parse_digits
from ..oci import Digest

BLOBS = "blobs"


def blobs_prefix(root: str) -> str:
    """Where the blobs live under the key prefix ``root`` (no slash at either end)."""
    return f"{root}/{BLOBS}/" if root else f"{BLOBS}/"


def object_key(root: str, digest: Digest) -> str:
    """The object key of ``digest`` under ``root``."""
    return f"{blobs_prefix(root)}{digest.algorithm}/{digest.hex}"


def digest_of_key(root: str, key: str) -> str | None:
    """The digest an object key names (``sha256:<hex>``), or None for any other key."""
    prefix = blobs_prefix(root)
    if not key.startswith(prefix):
        return None
    algorithm, sep, hexpart = key[len(prefix) :].partition("/")
    if not sep or not algorithm or not hexpart or "/" in hexpart:
        return None
    return f"{algorithm}:{hexpart}"


@dataclass(frozen=True, slots=True)
class Listed:
    """An object a listing named."""

    key: str
    size: int
    last_modified: dt.datetime


@dataclass(frozen=True, slots=True)
class Pending:
    """A multipart upload that was started and neither completed nor aborted."""

    key: str
    upload_id: str
    initiated: dt.datetime


def _strip(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(root: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in root if _strip(child.tag) == name]


def _text(node: ET.Element, name: str, default: str = "") -> str:
    for child in node:
        if _strip(child.tag) == name:
            return child.text or ""
    return default


def _time(text: str) -> dt.datetime:
    # S3 writes ISO 8601 with milliseconds and a Z: 2026-11-30T21:25:38.000Z.
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _size(text: str) -> int:
    # ASCII digits only: int() would take " 7", "1_0" and other scripts' digits, and
    # raise a bare ValueError on "\u00b2". A listing with a size that is not a number
    # is not one to delete by.
    size = parse_digits(text)
    if size is None:
        raise ValueError(f"an object's Size is not a number: {text[:20]!r}")
    return size


def parse_list(body: bytes) -> tuple[list[Listed], str | None]:
    """A ListObjectsV2 answer: its objects and the token of the next page (None: last).

    ValueError (ET.ParseError is a SyntaxError) when it is not one."""
    root = ET.fromstring(body)
    encoded = _text(root, "EncodingType") == "url"
    found = []
    for item in _children(root, "Contents"):
        key = _text(item, "Key")
        found.append(
            Listed(
                unquote(key) if encoded else key,
                _size(_text(item, "Size", "0")),
                _time(_text(item, "LastModified")),
            )
        )
    more = _text(root, "IsTruncated") == "true"
    token = _text(root, "NextContinuationToken") or None
    return found, token if more else None


def parse_uploads(body: bytes) -> tuple[list[Pending], tuple[str, str] | None]:
    """A ListMultipartUploads answer: the uploads, and the markers of the next page."""
    root = ET.fromstring(body)
    encoded = _text(root, "EncodingType") == "url"
    found = []
    for item in _children(root, "Upload"):
        key = _text(item, "Key")
        found.append(
            Pending(
                unquote(key) if encoded else key,
                _text(item, "UploadId"),
                _time(_text(item, "Initiated")),
            )
        )
    if _text(root, "IsTruncated") != "true":
        return found, None
    return found, (_text(root, "NextKeyMarker"), _text(root, "NextUploadIdMarker"))


def parse_upload_id(body: bytes) -> str:
    """The UploadId of an InitiateMultipartUploadResult ("" if it has none)."""
    return _text(ET.fromstring(body), "UploadId")


def error_code(body: bytes) -> str:
    """The Code of an S3 error document ("" when the body is not one).

    CompleteMultipartUpload can answer 200 and still have failed: the error is in
    the body (S3 API reference, CompleteMultipartUpload).
    """
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return ""
    return _text(root, "Code") if _strip(root.tag) == "Error" else ""


def complete_body(parts: Sequence[tuple[int, str]]) -> bytes:
    """The CompleteMultipartUpload document for ``(part number, ETag)`` in order."""
    items = "".join(
        f"<Part><PartNumber>{number}</PartNumber><ETag>{escape(etag)}</ETag></Part>"
        for number, etag in parts
    )
    return f"<CompleteMultipartUpload>{items}</CompleteMultipartUpload>".encode()


def part_plan(size: int, part_size: int, max_parts: int = 10_000) -> list[tuple[int, int, int]]:
    """``(part number, offset, length)`` for a multipart upload of ``size`` bytes.

    S3 takes at most 10,000 parts: a blob that would need more gets larger parts.
    """
    step = max(part_size, -(-size // max_parts))
    return [
        (i + 1, offset, min(step, size - offset)) for i, offset in enumerate(range(0, size, step))
    ]
