"""Pure OCI distribution grammar: names, references, digests, media types, Accept.

Everything here is a pure function of its input; nothing touches disk or network.
Grammar from the OCI distribution spec ("Pulling manifests" and the
``[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*`` name rule) and the image spec's
descriptor rules for digests.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Literal

from .errors import DigestInvalid, ManifestUnknown, NameInvalid, NotFound

NAME_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{NAME_COMPONENT}(?:/{NAME_COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
# Only the algorithms the image spec registers are accepted: anything else would
# be a digest the proxy cannot verify, and an unverifiable byte is never cached.
DIGEST_RES = {
    "sha256": re.compile(r"[a-f0-9]{64}"),
    "sha512": re.compile(r"[a-f0-9]{128}"),
}
# RFC 9110 section 12.4.2, a little looser ("0.55555", "2": clamped to 0..1 as ever).
QVALUE_RE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{0,6})?")
# distribution caps the whole repository name at 255 characters.
MAX_NAME_LENGTH = 255

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES: tuple[str, ...] = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})


@dataclass(frozen=True, slots=True)
class Digest:
    """A validated ``algorithm:hex`` content digest."""

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)


def parse_digest(text: str) -> Digest:
    """Parse and validate a digest, or raise DIGEST_INVALID."""
    algorithm, sep, hexpart = text.partition(":")
    pattern = DIGEST_RES.get(algorithm)
    if not sep or pattern is None or not pattern.fullmatch(hexpart):
        raise DigestInvalid("invalid digest", detail={"digest": text[:200]})
    return Digest(algorithm, hexpart)


def is_digest(reference: str) -> bool:
    return ":" in reference


def digest_of(data: bytes, algorithm: str = "sha256") -> Digest:
    return Digest(algorithm, hashlib.new(algorithm, data).hexdigest())


def validate_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not NAME_RE.fullmatch(name):
        raise NameInvalid("invalid repository name", detail={"name": name[:300]})
    return name


# A registry host as the first path component (CRI-O/podman mirrors put it there):
# a DNS name or IPv4 address with an optional port.
HOST_RE = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?(?::[0-9]{1,5})?")


def split_host(path_name: str) -> tuple[str | None, str]:
    """Split ``registry.example.com/team/app`` into host and repository name.

    Docker's rule (distribution ``reference.ParseNormalizedNamed``): the first
    component names a registry when it contains a dot or a colon, or is
    ``localhost``; otherwise the whole path is the repository name.
    """
    first, sep, rest = path_name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return None, path_name


def validate_path_name(path_name: str) -> str:
    """Validate a repository name that may carry a registry host prefix."""
    host, name = split_host(path_name)
    if host is not None and not HOST_RE.fullmatch(host):
        raise NameInvalid("invalid registry host", detail={"name": path_name[:300]})
    validate_name(name)
    return path_name


def validate_tag(tag: str) -> str:
    """Check tag grammar. A reference that can never name a manifest is unknown."""
    if not TAG_RE.fullmatch(tag):
        raise ManifestUnknown("invalid tag", detail={"tag": tag[:200]})
    return tag


Kind = Literal["base", "manifest", "blob", "tags", "referrers", "upload", "catalog"]


@dataclass(frozen=True, slots=True)
class Route:
    """A parsed ``/v2/...`` path."""

    kind: Kind
    name: str = ""
    reference: str = ""


_SUFFIXES: tuple[tuple[str, Kind], ...] = (
    ("/manifests/", "manifest"),
    ("/blobs/uploads/", "upload"),
    ("/blobs/", "blob"),
    ("/referrers/", "referrers"),
)


def parse_path(path: str) -> Route:
    """Split a request path into endpoint kind, repository name and reference.

    The name is validated but may still carry a registry host prefix (see
    :func:`split_host`); the router decides what it means. Names contain slashes,
    so the path is split on the last endpoint marker, as the spec's endpoint table
    does (``/v2/<name>/manifests/<reference>``).
    """
    if path in ("/v2", "/v2/"):
        return Route("base")
    if not path.startswith("/v2/"):
        raise NotFound("unknown path")
    rest = path[4:]
    if rest == "_catalog":
        return Route("catalog")
    if rest.endswith("/tags/list"):
        return Route("tags", validate_path_name(rest[: -len("/tags/list")]))
    if rest.endswith("/blobs/uploads") or rest.endswith("/blobs/uploads/"):
        name = rest.rsplit("/blobs/uploads", 1)[0]
        return Route("upload", validate_path_name(name))
    best: tuple[int, str, Kind] | None = None
    for marker, kind in _SUFFIXES:
        at = rest.rfind(marker)
        if at > 0 and (best is None or at > best[0]):
            best = (at, marker, kind)
    if best is None:
        raise NotFound("unknown path")
    at, marker, kind = best
    name, reference = rest[:at], rest[at + len(marker) :]
    if kind == "upload":
        return Route("upload", validate_path_name(name), reference)
    if not reference or "/" in reference:
        if kind in ("blob", "referrers") or ":" in reference:
            # A digest the grammar cannot parse, not a missing endpoint.
            raise DigestInvalid("invalid digest", detail={"digest": reference[:200]})
        raise NotFound("unknown path")
    validate_path_name(name)
    if kind in ("blob", "referrers") or is_digest(reference):
        parse_digest(reference)
    else:
        validate_tag(reference)
    return Route(kind, name, reference)


@dataclass(frozen=True, slots=True)
class AcceptRange:
    media_type: str
    q: float


def parse_accept(values: list[str]) -> list[AcceptRange]:
    """Parse Accept header values (RFC 9110 section 12.5.1), keeping q-values."""
    out: list[AcceptRange] = []
    for value in values:
        for item in value.split(","):
            parts = [p.strip() for p in item.split(";")]
            media = parts[0].lower()
            if not media:
                continue
            q = 1.0
            for param in parts[1:]:
                key, _, val = param.partition("=")
                if key.strip().lower() == "q":
                    # Section 12.4.2: a qvalue is ASCII digits ("0.8"); float() would
                    # also take "nan", "1e0", "\u0661" (an Arabic-Indic one).
                    text = val.strip()
                    q = float(text) if QVALUE_RE.fullmatch(text) else 0.0
            out.append(AcceptRange(media, max(0.0, min(q, 1.0))))
    return out


def accepted_manifest_types(accept_values: list[str]) -> tuple[str, ...]:
    """See :func:`_accepted`; clients send the same few Accept headers over and over."""
    return _accepted(tuple(accept_values))


@functools.lru_cache(maxsize=256)
def _accepted(accept_values: tuple[str, ...]) -> tuple[str, ...]:
    """The manifest media types a client's Accept admits, in spec order.

    No Accept header, or one that only names wildcards, admits every manifest type:
    such a client (curl, a browser) takes whatever the registry holds. Types with
    ``q=0`` are refused explicitly (RFC 9110 section 12.4.2).
    """
    ranges = parse_accept(list(accept_values))
    if not ranges:
        return MANIFEST_TYPES
    admitted: list[str] = []
    for media in MANIFEST_TYPES:
        q = _quality(ranges, media)
        if q > 0:
            admitted.append(media)
    return tuple(admitted)


def _quality(ranges: list[AcceptRange], media: str) -> float:
    main = media.split("/", 1)[0]
    best: tuple[int, float] | None = None
    for r in ranges:
        if r.media_type == media:
            spec = 3
        elif r.media_type == f"{main}/*":
            spec = 2
        elif r.media_type == "*/*":
            spec = 1
        else:
            continue
        if best is None or spec > best[0]:
            best = (spec, r.q)
    return best[1] if best else 0.0


def manifest_media_type(body: bytes, header_type: str | None) -> str:
    """The media type of a manifest: its own ``mediaType`` field wins, else the header's
    (when the body's shape does not contradict it), else the shape's.

    The image spec makes ``mediaType`` a SHOULD in manifests and indexes; Docker's
    schema2 and list always carry it. An index has ``manifests``, an image manifest
    ``layers``: a header naming one for a body shaped as the other is not believed.
    Callers bound the body size before this.
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if isinstance(doc, dict):
        declared = doc.get("mediaType")
        if isinstance(declared, str) and declared in MANIFEST_TYPES:
            return declared
        if header_type in MANIFEST_TYPES:
            is_index = "manifests" in doc and "layers" not in doc
            is_image = "layers" in doc and "manifests" not in doc
            if not (is_image and header_type in INDEX_TYPES) and not (
                is_index and header_type not in INDEX_TYPES
            ):
                return str(header_type)
        if "manifests" in doc:
            return OCI_INDEX
        if "layers" in doc:
            return OCI_MANIFEST
    ct = (header_type or "").split(";", 1)[0].strip()
    return ct or "application/octet-stream"


def references(body: bytes) -> list[str]:
    """The digests a registry checked before it accepted this manifest or index.

    On push, a registry verifies that an image manifest's ``config`` and ``layers``
    exist in the repository and that an index's ``manifests`` do. It does not check
    the rest: distribution-spec 1.1 says a registry MUST accept a ``subject`` that
    does not exist, ``blobs`` belongs to the withdrawn artifact manifest and is
    stored unread, and a layer with ``urls`` (foreign, non-distributable) is fetched
    from elsewhere and may skip the check. So only the checked descriptors are what
    the image needs (export, gc) and what a repository may be said to hold; a
    ``subject``, a ``blobs`` list, a foreign layer and annotations are never followed.
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return []
    if not isinstance(doc, dict):
        return []
    descriptors: list[object] = [doc.get("config")]
    for key in ("layers", "manifests"):
        items = doc.get(key)
        if isinstance(items, list):
            descriptors.extend(items)
    found: list[str] = []
    for desc in descriptors:
        if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str):
            continue
        if desc.get("urls"):
            continue  # foreign: the registry need not hold it (image-spec, "urls")
        found.append(desc["digest"])
    return found


@dataclass(frozen=True)
class ImageRef:
    """An image as an operator names it, ``[registry/]name[:tag|@digest]``, parsed."""

    host: str | None
    name: str
    reference: str  # a tag or a digest
    text: str


def parse_ref(text: str) -> ImageRef:
    """``[registry/]name[:tag|@digest]`` with Docker's rules (default tag latest)."""
    raw = text.strip()
    rest, at, digest = raw.partition("@")
    host, path = split_host(rest)
    name, colon, tag = path.rpartition(":")
    if not colon or "/" in tag:
        name, tag = path, "latest"
    if at:
        parse_digest(digest)
        reference = digest
    else:
        validate_tag(tag)
        reference = tag
    validate_name(name)
    return ImageRef(host, name, reference, raw)
