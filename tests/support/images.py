"""Build deterministic test images and push them through a registry's HTTP API.

Layers are real gzip-compressed tar archives whose payload is seeded pseudo-random bytes
(so gzip cannot shrink them away), configs are real image configs whose
``rootfs.diff_ids`` are the digests of the uncompressed tars, and manifests are OCI image
manifests / indexes or Docker schema2 manifests / manifest lists. Everything is pushed
the way the distribution spec describes (``POST`` then ``PUT ?digest=`` for blobs,
``PATCH`` chunks for large ones, ``PUT /manifests/<ref>`` with the manifest's media type).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import io
import json
import random
import tarfile
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import aiohttp
from yarl import URL

from cacheproxy.oci import Digest, parse_digest

Media = Literal["oci", "docker"]
#: ``(os, architecture)`` or ``(os, architecture, variant)``.
Platform = tuple[str, ...]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

_TYPES: dict[Media, tuple[str, str, str, str]] = {
    # media: (manifest, index, config, layer)
    "oci": (OCI_MANIFEST, OCI_INDEX, OCI_CONFIG, OCI_LAYER_GZIP),
    "docker": (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_CONFIG, DOCKER_LAYER_GZIP),
}

#: Chunk size of :func:`random_chunks` and of PATCH uploads.
CHUNK_SIZE = 1 << 20
# A fixed timestamp keeps configs (and so digests) identical across runs.
_CREATED = "2024-01-01T00:00:00Z"


def basic_credentials(user: str, password: str) -> str:
    """The ``Authorization`` value of HTTP Basic auth (RFC 7617)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Basic {token}"


def basic_auth(user: str, password: str) -> dict[str, str]:
    """Headers for HTTP Basic auth (RFC 7617), for the ``headers=`` of requests."""
    return {"Authorization": basic_credentials(user, password)}


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of *data*."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_of(data: bytes) -> Digest:
    """The parsed sha256 digest of *data*, as the store and the fills take it."""
    return parse_digest(sha256_digest(data))


@dataclass(frozen=True)
class Descriptor:
    """One blob as a manifest refers to it."""

    media_type: str
    digest: str
    size: int

    def to_json(self) -> dict[str, object]:
        """The OCI/Docker descriptor object."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class PushedImage:
    """An image (or index) as pushed: enough to pull it back and check every byte.

    For an image, ``blobs`` is ``(config, *layers)`` and ``blob_data`` holds their bytes.
    For an index, ``blobs`` is empty and ``children`` holds the per-platform images.
    """

    name: str
    tag: str | None
    digest: str
    media_type: str
    manifest: bytes = field(repr=False)
    blobs: tuple[Descriptor, ...] = ()
    children: tuple[PushedImage, ...] = ()
    platform: Platform | None = None
    blob_data: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    @property
    def reference(self) -> str:
        """``name:tag``, or ``name@digest`` for an untagged image."""
        return f"{self.name}:{self.tag}" if self.tag is not None else f"{self.name}@{self.digest}"

    @property
    def config(self) -> Descriptor | None:
        """The config blob (None for an index)."""
        return self.blobs[0] if self.blobs else None

    @property
    def layers(self) -> tuple[Descriptor, ...]:
        """The layer blobs, base first (empty for an index)."""
        return self.blobs[1:]

    @property
    def is_index(self) -> bool:
        """True for an OCI index or Docker manifest list."""
        return self.media_type in (OCI_INDEX, DOCKER_MANIFEST_LIST)

    def all_blobs(self) -> list[Descriptor]:
        """This image's blobs plus, for an index, every child's blobs."""
        out = list(self.blobs)
        for child in self.children:
            out.extend(child.all_blobs())
        return out


# --- building -----------------------------------------------------------------------


def random_bytes(size: int, seed: object) -> bytes:
    """*size* pseudo-random bytes, the same for the same *seed* on every run."""
    return random.Random(str(seed)).randbytes(size)


def random_chunks(size: int, seed: object, chunk_size: int = CHUNK_SIZE) -> Iterable[bytes]:
    """:func:`random_bytes`-style data of *size* bytes, yielded *chunk_size* at a time."""
    rng = random.Random(str(seed))
    left = size
    while left > 0:
        n = min(chunk_size, left)
        yield rng.randbytes(n)
        left -= n


def make_layer(size: int, seed: object) -> tuple[bytes, str]:
    """A gzip'd tar holding one file of *size* seeded random bytes.

    Returns ``(compressed bytes, diff_id)`` where diff_id is the digest of the plain tar.
    Every header field and the gzip mtime are fixed, so the bytes depend on the seed only.
    """
    payload = random_bytes(size, seed)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(name="payload.bin")
        info.size = size
        info.mtime = 1704067200
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        tar.addfile(info, io.BytesIO(payload))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, compresslevel=1, mtime=0), sha256_digest(tar_bytes)


def make_config(platform: Platform, diff_ids: Sequence[str], seed: object) -> bytes:
    """A minimal but complete image config (OCI and Docker share this shape)."""
    os_, arch, *variant = platform
    config: dict[str, object] = {
        "created": _CREATED,
        "architecture": arch,
        "os": os_,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": {"org.cacheproxy.test.seed": str(seed)},
        },
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [
            {"created": _CREATED, "created_by": f"cacheproxy-test layer {i}"}
            for i in range(len(diff_ids))
        ],
    }
    if variant:
        config["variant"] = variant[0]
    return _dumps(config)


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, indent=3).encode()


def _platform_json(platform: Platform) -> dict[str, str]:
    os_, arch, *variant = platform
    out = {"architecture": arch, "os": os_}
    if variant:
        out["variant"] = variant[0]
    return out


# --- pushing ------------------------------------------------------------------------


class PushError(RuntimeError):
    """The registry refused a push step."""


class _SessionScope:
    """Use the caller's session, or open (and close) one of our own."""

    def __init__(self, session: aiohttp.ClientSession | None) -> None:
        self._given = session
        self._own: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> aiohttp.ClientSession:
        if self._given is not None:
            return self._given
        self._own = aiohttp.ClientSession()
        return self._own

    async def __aexit__(self, *exc_info: object) -> None:
        if self._own is not None:
            await self._own.close()


async def _check(resp: aiohttp.ClientResponse, expected: int, step: str) -> None:
    if resp.status != expected:
        body = await resp.text(errors="replace")
        raise PushError(f"{step}: expected {expected}, got {resp.status}: {body[:500]}")


def _location(base: URL, resp: aiohttp.ClientResponse) -> str:
    # Distribution answers with an absolute Location; the spec allows a relative one.
    location = resp.headers["Location"]
    return str(base.join(URL(location, encoded=True)))


def _with_digest(location: str, digest: str) -> URL:
    # Append rather than re-encode: the upload URL carries an opaque, signed _state.
    sep = "&" if "?" in location else "?"
    return URL(f"{location}{sep}digest={digest}", encoded=True)


async def _start_upload(
    session: aiohttp.ClientSession, base: URL, name: str, headers: Mapping[str, str] | None
) -> str:
    async with session.post(base / "v2" / name / "blobs/uploads/", headers=headers) as resp:
        await _check(resp, 202, f"start upload to {name}")
        return _location(base, resp)


async def push_blob(
    registry_url: str,
    name: str,
    data: bytes,
    *,
    session: aiohttp.ClientSession | None = None,
    headers: Mapping[str, str] | None = None,
) -> str:
    """Push *data* as one blob with a monolithic upload; return its digest."""
    digest = sha256_digest(data)
    base = URL(registry_url)
    async with _SessionScope(session) as s:
        location = await _start_upload(s, base, name, headers)
        async with s.put(
            _with_digest(location, digest),
            data=io.BytesIO(data),  # aiohttp warns on raw bytes > 1 MiB
            headers={**(headers or {}), "Content-Type": "application/octet-stream"},
        ) as resp:
            await _check(resp, 201, f"upload {digest}")
    return digest


async def push_blob_stream(
    registry_url: str,
    name: str,
    chunks: Iterable[bytes] | AsyncIterable[bytes],
    *,
    session: aiohttp.ClientSession | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[str, int]:
    """Push a large blob chunk by chunk with ``PATCH``; return ``(digest, size)``.

    Each chunk is sent as its own ``PATCH`` with a ``Content-Range`` (the spec's chunked
    upload), so only one chunk is in memory at a time and the digest is computed on the
    way. Use with :func:`random_chunks` for a 200 MB blob.
    """
    base = URL(registry_url)
    hasher = hashlib.sha256()
    offset = 0
    async with _SessionScope(session) as s:
        location = await _start_upload(s, base, name, headers)
        async for chunk in _aiter(chunks):
            if not chunk:
                continue
            hasher.update(chunk)
            patch_headers = {
                **(headers or {}),
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
            }
            async with s.patch(
                URL(location, encoded=True), data=io.BytesIO(chunk), headers=patch_headers
            ) as resp:
                await _check(resp, 202, f"PATCH at {offset}")
                location = _location(base, resp)
            offset += len(chunk)
        digest = "sha256:" + hasher.hexdigest()
        async with s.put(_with_digest(location, digest), headers=headers) as resp:
            await _check(resp, 201, f"finish upload {digest}")
    return digest, offset


async def _aiter(chunks: Iterable[bytes] | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    if isinstance(chunks, AsyncIterable):
        async for chunk in chunks:
            yield chunk
    else:
        for chunk in chunks:
            yield chunk


async def push_manifest(
    registry_url: str,
    name: str,
    reference: str,
    manifest: bytes,
    media_type: str,
    *,
    session: aiohttp.ClientSession | None = None,
    headers: Mapping[str, str] | None = None,
) -> str:
    """``PUT`` *manifest* under *reference* (tag or digest); return its digest."""
    digest = sha256_digest(manifest)
    async with (
        _SessionScope(session) as s,
        s.put(
            URL(registry_url) / "v2" / name / "manifests" / reference,
            data=manifest,
            headers={**(headers or {}), "Content-Type": media_type},
        ) as resp,
    ):
        await _check(resp, 201, f"put manifest {name}:{reference}")
        returned = resp.headers.get("Docker-Content-Digest")
    if returned is not None and returned != digest:
        raise PushError(f"registry digest {returned} != computed {digest}")
    return digest


def build_image(
    name: str,
    tag: str | None,
    *,
    layer_sizes: Sequence[int] = (64 * 1024, 256 * 1024),
    media: Media = "oci",
    seed: object = None,
    platform: Platform = ("linux", "amd64"),
) -> PushedImage:
    """Build (but do not push) an image with one layer per *layer_sizes* entry.

    *layer_sizes* are payload sizes in bytes before tar and gzip. *seed* defaults to
    ``name:tag``; the platform is always mixed in, so different images share no layers
    unless a test passes the same seed and platform on purpose.
    """
    manifest_type, _, config_type, layer_type = _TYPES[media]
    if seed is None:
        seed = f"{name}:{tag}"
    seed = f"{seed}/{'/'.join(platform)}"
    blob_data: dict[str, bytes] = {}
    layers: list[Descriptor] = []
    diff_ids: list[str] = []
    for i, size in enumerate(layer_sizes):
        data, diff_id = make_layer(size, f"{seed}/layer{i}")
        diff_ids.append(diff_id)
        desc = Descriptor(layer_type, sha256_digest(data), len(data))
        layers.append(desc)
        blob_data[desc.digest] = data
    config_bytes = make_config(platform, diff_ids, seed)
    config = Descriptor(config_type, sha256_digest(config_bytes), len(config_bytes))
    blob_data[config.digest] = config_bytes
    manifest = _dumps(
        {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": config.to_json(),
            "layers": [layer.to_json() for layer in layers],
        }
    )
    return PushedImage(
        name=name,
        tag=tag,
        digest=sha256_digest(manifest),
        media_type=manifest_type,
        manifest=manifest,
        blobs=(config, *layers),
        platform=platform,
        blob_data=blob_data,
    )


async def push_built(
    registry_url: str,
    image: PushedImage,
    *,
    session: aiohttp.ClientSession | None = None,
    headers: Mapping[str, str] | None = None,
) -> PushedImage:
    """Push an image from :func:`build_image`: blobs first, then the manifest."""
    async with _SessionScope(session) as s:
        for data in image.blob_data.values():
            await push_blob(registry_url, image.name, data, session=s, headers=headers)
        await push_manifest(
            registry_url,
            image.name,
            image.tag or image.digest,
            image.manifest,
            image.media_type,
            session=s,
            headers=headers,
        )
    return image


async def push_image(
    registry_url: str,
    name: str,
    tag: str | None,
    *,
    layer_sizes: Sequence[int] = (64 * 1024, 256 * 1024),
    media: Media = "oci",
    seed: object = None,
    platform: Platform = ("linux", "amd64"),
    session: aiohttp.ClientSession | None = None,
    headers: Mapping[str, str] | None = None,
) -> PushedImage:
    """Build an image (see :func:`build_image`) and push it; ``tag=None`` pushes by digest."""
    # Random data, tar and gzip of big layers would stall the loop (and the in-process
    # servers a test runs on it), so build in a thread.
    image = await asyncio.to_thread(
        build_image,
        name,
        tag,
        layer_sizes=layer_sizes,
        media=media,
        seed=seed,
        platform=platform,
    )
    return await push_built(registry_url, image, session=session, headers=headers)


async def push_index(
    registry_url: str,
    name: str,
    tag: str,
    *,
    platforms: Sequence[Platform] = (("linux", "amd64"), ("linux", "arm64", "v8")),
    media: Media = "oci",
    layer_sizes: Sequence[int] = (64 * 1024,),
    seed: object = None,
    session: aiohttp.ClientSession | None = None,
    headers: Mapping[str, str] | None = None,
) -> PushedImage:
    """Push one image per platform by digest, then an OCI index / Docker manifest list."""
    _, index_type, _, _ = _TYPES[media]
    if seed is None:
        seed = f"{name}:{tag}"
    async with _SessionScope(session) as s:
        children = [
            await push_image(
                registry_url,
                name,
                None,
                layer_sizes=layer_sizes,
                media=media,
                seed=seed,
                platform=platform,
                session=s,
                headers=headers,
            )
            for platform in platforms
        ]
        manifest = _dumps(
            {
                "schemaVersion": 2,
                "mediaType": index_type,
                "manifests": [
                    {
                        "mediaType": child.media_type,
                        "digest": child.digest,
                        "size": len(child.manifest),
                        "platform": _platform_json(platform),
                    }
                    for child, platform in zip(children, platforms, strict=True)
                ],
            }
        )
        digest = await push_manifest(
            registry_url, name, tag, manifest, index_type, session=s, headers=headers
        )
    return PushedImage(
        name=name,
        tag=tag,
        digest=digest,
        media_type=index_type,
        manifest=manifest,
        children=tuple(children),
    )
