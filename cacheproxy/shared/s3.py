"""A small S3 client: boto3 signs, aiohttp moves the bytes.

Every request is a standard S3 REST call with a SigV4 presigned URL
(``generate_presigned_url``), so AWS S3, MinIO, Ceph RGW, R2 and GCS's interop
endpoint answer it alike, with path-style or virtual-host addressing as configured.
Signing is local, but resolving credentials can block (a profile's files, an
AssumeRole refresh), so it runs on the AWS threads (``upstream.aws.AwsClients``),
never the default pool; GET and HEAD URLs are reused for a while. Bodies go
through aiohttp on the event loop: no blob byte crosses a thread.

Presigned URLs carry a signature valid for one request shape: they are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload
from yarl import URL

from ..config import SharedConfig
from ..upstream.aws import AwsClients
from ..upstream.credentials import assumed_role_session, quiet_aws_logs
from .keys import Listed, Pending, complete_body, error_code, parse_list, parse_upload_id
from .keys import parse_uploads as parse_pending

log = logging.getLogger(__name__)

# Signed GET/HEAD URLs are reused this long (signed for twice as long), and at most
# this many are remembered.
URL_REUSE = 300
URL_MEMORY = 10_000
# Listings and error documents are small; a body past this is not one.
MAX_XML = 16 * 1024 * 1024
# A part is read from its file in slices of this size, on the loop: the file was just
# written and sits in the page cache (the fill writes slices this size on the loop too).
READ_SLICE = 256 * 1024

S3ClientFactory = Callable[[SharedConfig], Any]

_METHODS = {
    "head_object": "HEAD",
    "get_object": "GET",
    "put_object": "PUT",
    "create_multipart_upload": "POST",
    "upload_part": "PUT",
    "complete_multipart_upload": "POST",
    "abort_multipart_upload": "DELETE",
    "delete_object": "DELETE",
    "list_objects_v2": "GET",
    "list_multipart_uploads": "GET",
}


@dataclass(frozen=True, slots=True)
class Stat:
    """What a HEAD says of an object."""

    size: int
    etag: str


class S3Unavailable(Exception):
    """The bucket did not answer as it should: unreachable, slow, refused, failing.

    ``kind`` names the fault for the metrics: unreachable, timeout, denied,
    server-error, bad-answer.
    """

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def boto3_s3_client(settings: SharedConfig) -> Any:
    """An S3 client for signing only: boto3's default credential chain, a profile, or
    a role assumed and renewed before its keys expire."""
    import boto3
    from botocore.config import Config as BotoConfig

    quiet_aws_logs()
    session = boto3.session.Session(profile_name=settings.aws_profile, region_name=settings.region)
    if settings.aws_role_arn:
        session = assumed_role_session(session, settings.aws_role_arn, settings.region)
    config = BotoConfig(
        signature_version="s3v4", s3={"addressing_style": settings.addressing_style}
    )
    return session.client("s3", endpoint_url=settings.endpoint_url, config=config)


def redirect_signer(settings: SharedConfig, aws: AwsClients) -> S3 | None:
    """The signer of the URLs redirect mode hands to clients, when its credentials
    are not the tier's own (``redirect_profile``, ``redirect_role_arn``): a presigned
    URL carries its access key id, never its secret, and whoever holds it may use it
    until it expires, so the key clients see should only read the bucket."""
    if not settings.redirect or not (settings.redirect_profile or settings.redirect_role_arn):
        return None
    signing = replace(
        settings,
        aws_profile=settings.redirect_profile or settings.aws_profile,
        aws_role_arn=settings.redirect_role_arn,
    )
    return S3(signing, aws)


class FileSpan(Payload):
    """``count`` bytes of an open file from ``offset``, as a request body of known length."""

    def __init__(self, fd: int, offset: int, count: int) -> None:
        super().__init__(fd, content_type="application/octet-stream")
        self._fd = fd
        self._offset = offset
        self._size = count

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a file span is not text")

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        assert self._size is not None
        left = self._size if content_length is None else min(self._size, content_length)
        pos = self._offset
        while left > 0:
            # Off the loop: an upload may run long after the page cache let go.
            chunk = await asyncio.to_thread(os.pread, self._fd, min(READ_SLICE, left), pos)
            if not chunk:
                raise OSError("blob file shorter than its upload")
            await writer.write(chunk)
            pos += len(chunk)
            left -= len(chunk)


class S3:
    """The bucket of ``settings``, for the shared tier's reads, writes and upkeep."""

    def __init__(
        self,
        settings: SharedConfig,
        aws: AwsClients,
        factory: S3ClientFactory = boto3_s3_client,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._aws = aws
        self._factory = factory
        self._clock = clock
        self._client: Any = None
        self._urls: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        # Connections for blob bodies, for writes, and for everything else (HEADs,
        # manifests, listings): a manifest never waits behind blob bodies.
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._closed = False

    def _session(self, lane: str) -> aiohttp.ClientSession:
        if self._closed:
            raise S3Unavailable("unreachable", "the proxy is shutting down")
        current = self._sessions.get(lane)
        if current is not None:
            return current
        writes = lane == "writes"
        s = self.settings
        tls: ssl.SSLContext | bool = True
        if not s.tls_verify:
            tls = False
        elif s.ca_file is not None:
            tls = ssl.create_default_context(cafile=str(s.ca_file))
        limit = {"writes": s.upload_concurrency + 2, "blobs": s.connections}.get(lane, 16)
        # A write waits for S3 to store what it got (a multipart completion can take a while).
        read = s.read_timeout * (6 if writes else 1)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, ssl=tls),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=s.connect_timeout, sock_read=read
            ),
            auto_decompress=False,
            skip_auto_headers=("Content-Type",),
        )
        self._sessions[lane] = session
        return session

    # --- signing -------------------------------------------------------------------

    async def presign(self, op: str, expires: int | None = None, **params: Any) -> str:
        """A presigned URL for one ``op`` (a boto3 method name) on this bucket."""
        key = str(params.get("Key", ""))
        reusable = op in ("get_object", "head_object") and expires is None and len(params) == 1
        if reusable:
            found = self._urls.get((op, key))
            if found is not None and found[1] > self._clock():
                self._urls.move_to_end((op, key))
                return found[0]
        lifetime = expires if expires is not None else 2 * URL_REUSE
        url: str = await self._aws.run(lambda: self._sign(op, lifetime, params))
        if reusable:
            self._urls[(op, key)] = (url, self._clock() + URL_REUSE)
            if len(self._urls) > URL_MEMORY:
                self._urls.popitem(last=False)
        return url

    def _sign(self, op: str, expires: int, params: dict[str, Any]) -> str:
        # On an AWS thread: building the client reads files, signing may refresh keys.
        if self._client is None:
            self._client = self._factory(self.settings)
        signed: str = self._client.generate_presigned_url(
            op,
            Params={"Bucket": self.settings.bucket, **params},
            ExpiresIn=expires,
            HttpMethod=_METHODS[op],
        )
        return signed

    # --- requests ------------------------------------------------------------------

    async def send(
        self,
        op: str,
        headers: dict[str, str] | None = None,
        data: Any = None,
        *,
        writes: bool = False,
        blob: bool = False,
        **params: Any,
    ) -> aiohttp.ClientResponse:
        """Send one signed request; raises S3Unavailable for faults of the wire or of S3
        (403, 5xx). Other answers (404, 416, 412, ...) are the caller's to read.
        ``blob``: a blob body, on the connections kept for them."""
        try:
            url = await self.presign(op, **params)
        except Exception as exc:  # botocore raises many kinds (no credentials, ...)
            raise S3Unavailable("signing", type(exc).__name__) from exc
        try:
            lane = "writes" if writes else "blobs" if blob else "control"
            resp = await self._session(lane).request(
                _METHODS[op], URL(url, encoded=True), headers=headers, data=data,
                allow_redirects=False,
            )  # fmt: skip
        except TimeoutError as exc:
            raise S3Unavailable("timeout", f"{op} timed out") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise S3Unavailable("unreachable", f"{op}: {type(exc).__name__}") from exc
        if resp.status == 403 or resp.status >= 500 or resp.status in (301, 307, 400):
            body = b"" if op == "head_object" else await _small(resp)
            resp.release()
            code = error_code(body) or str(resp.status)
            kind = "denied" if resp.status == 403 else "server-error"
            if resp.status < 500 and resp.status != 403:
                kind = "bad-answer"
            raise S3Unavailable(kind, f"{op} answered {resp.status} {code}")
        return resp

    async def head(self, key: str) -> Stat | None:
        """The object's size and ETag, or None when the bucket has no such object."""
        async with await self.send("head_object", Key=key) as resp:
            if resp.status == 404:
                return None
            if resp.status != 200 or resp.content_length is None:
                raise S3Unavailable("bad-answer", f"HEAD answered {resp.status}")
            return Stat(resp.content_length, resp.headers.get("ETag", ""))

    async def get(
        self, key: str, start: int = 0, end: int | None = None, blob: bool = False
    ) -> aiohttp.ClientResponse:
        """The object, or bytes ``start..end`` of it (RFC 9110 section 14)."""
        headers = {}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
        return await self.send("get_object", headers, blob=blob, Key=key)

    async def put(self, key: str, body: Payload | bytes, content_type: str | None = None) -> None:
        """One PUT of a whole object."""
        params: dict[str, Any] = {"Key": key}
        headers = {}
        if content_type is not None:
            # Signed into the URL, so it must be sent as signed.
            params["ContentType"] = headers["Content-Type"] = content_type
        async with await self.send("put_object", headers, body, writes=True, **params) as resp:
            await _expect_ok(resp, "PUT")

    async def create_upload(self, key: str) -> str:
        async with await self.send("create_multipart_upload", writes=True, Key=key) as resp:
            body = await _expect_ok(resp, "CreateMultipartUpload")
        upload_id = parse_upload_id(body)
        if not upload_id:
            raise S3Unavailable("bad-answer", "CreateMultipartUpload gave no UploadId")
        return upload_id

    async def upload_part(self, key: str, upload_id: str, number: int, body: Payload) -> str:
        """Send one part; returns its ETag (needed to complete the upload)."""
        params: dict[str, Any] = {"Key": key, "UploadId": upload_id, "PartNumber": number}
        async with await self.send("upload_part", None, body, writes=True, **params) as resp:
            await _expect_ok(resp, "UploadPart")
            etag = resp.headers.get("ETag", "")
        if not etag:
            raise S3Unavailable("bad-answer", "UploadPart gave no ETag")
        return etag

    async def complete_upload(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> None:
        """Make the upload's object visible, whole, at once."""
        params: dict[str, Any] = {"Key": key, "UploadId": upload_id}
        body = complete_body(parts)
        headers = {"Content-Type": "application/xml"}
        async with await self.send(
            "complete_multipart_upload", headers, body, writes=True, **params
        ) as resp:
            answer = await _expect_ok(resp, "CompleteMultipartUpload")
        # A 200 whose body is an error document failed all the same.
        code = error_code(answer)
        if code:
            raise S3Unavailable("server-error", f"CompleteMultipartUpload failed: {code}")

    async def abort_upload(self, key: str, upload_id: str) -> None:
        async with await self.send(
            "abort_multipart_upload", writes=True, Key=key, UploadId=upload_id
        ) as resp:
            if resp.status not in (204, 200, 404):
                raise S3Unavailable("bad-answer", f"AbortMultipartUpload answered {resp.status}")

    async def delete(self, key: str) -> None:
        async with await self.send("delete_object", writes=True, Key=key) as resp:
            if resp.status not in (204, 200, 404):
                raise S3Unavailable("bad-answer", f"DELETE answered {resp.status}")

    async def list_objects(
        self, prefix: str, token: str | None = None
    ) -> tuple[list[Listed], str | None]:
        """One page of the objects under ``prefix``, and the next page's token."""
        params: dict[str, Any] = {"Prefix": prefix}
        if token:
            params["ContinuationToken"] = token
        async with await self.send("list_objects_v2", **params) as resp:
            body = await _expect_ok(resp, "ListObjectsV2")
        try:
            return parse_list(body)
        except (ValueError, SyntaxError) as exc:  # ET.ParseError is a SyntaxError
            raise S3Unavailable("bad-answer", f"ListObjectsV2: {exc}") from None

    async def list_uploads(
        self, prefix: str, after: tuple[str, str] | None = None
    ) -> tuple[list[Pending], tuple[str, str] | None]:
        """One page of the unfinished multipart uploads under ``prefix``."""
        params: dict[str, Any] = {"Prefix": prefix}
        if after is not None:
            params["KeyMarker"], params["UploadIdMarker"] = after
        async with await self.send("list_multipart_uploads", **params) as resp:
            return parse_pending(await _expect_ok(resp, "ListMultipartUploads"))

    async def close(self) -> None:
        self._closed = True
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()


async def _read_xml(resp: aiohttp.ClientResponse) -> bytes:
    """The whole (small) body; a body past MAX_XML is not an S3 document."""
    parts: list[bytes] = []
    total = 0
    while True:
        chunk = await resp.content.readany()
        if not chunk:
            return b"".join(parts)
        total += len(chunk)
        if total > MAX_XML:
            raise S3Unavailable("bad-answer", "an answer too large to be S3's")
        parts.append(chunk)


async def _small(resp: aiohttp.ClientResponse) -> bytes:
    try:
        return await _read_xml(resp)
    except (aiohttp.ClientError, TimeoutError, S3Unavailable):
        return b""


async def _expect_ok(resp: aiohttp.ClientResponse, what: str) -> bytes:
    """The body of a 200 answer; anything else is a bad answer."""
    if resp.status != 200:
        raise S3Unavailable("bad-answer", f"{what} answered {resp.status}")
    try:
        return await _read_xml(resp)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise S3Unavailable("unreachable", f"{what}: the answer broke off") from exc
