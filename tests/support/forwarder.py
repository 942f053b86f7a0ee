"""An in-process HTTP forwarder that counts, slows down and breaks upstream traffic.

:class:`Forwarder` sits between the code under test and the real registry. It streams
every request and response through unchanged, and on demand throttles response bodies
or injects a fault into the requests whose path matches: a flipped byte, a truncated or
stalled body, an error status, or a reset connection. It runs on the test's own event
loop, so a test can flip faults while a transfer is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

FaultKind = Literal["corrupt", "truncate", "status", "stall", "reset", "abort", "length"]

# RFC 9110 section 7.6.1: connection-specific fields a proxy must not forward (plus any
# named in Connection). Host is rebuilt by the client session for the target and Expect
# was already answered by our server. Content-Length is forwarded both ways: it keeps
# the request framing, and a truncated response body stays visibly short.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "expect",
    }
)

CHUNK_SIZE = 64 * 1024
#: Upper bound on any stall, so a forgotten fault cannot hang a test run.
MAX_STALL = 120.0


@dataclass
class Fault:
    """A fault applied to requests whose ``path?query`` matches *match*.

    *match* is a substring, or a compiled regex searched in the path. *offset* means, by
    kind: ``corrupt`` flips (XOR 0xFF) the body byte at *offset*; ``truncate`` sends
    *offset* body bytes then closes the connection short of Content-Length (the client
    gets every byte sent, then a premature EOF); ``stall`` sends *offset* body bytes,
    then sends nothing (connection open) until the fault is cleared or the client leaves,
    then sends the rest. ``status`` answers *status* with *headers* and *body* without
    contacting the upstream; ``reset`` tears the connection down with an RST before any
    response. Note that aiohttp's client retries an idempotent request once after a
    reset, so against it a ``once`` reset goes unnoticed (use ``times=2``).
    ``abort`` sends *offset* body bytes, then tears the connection down with an RST
    (bytes still in flight may be lost). ``length`` forwards the body unchanged but
    announces ``Content-Length: offset``; a negative *offset* announces no length at
    all (the body goes chunked). A shorter announced length clips the body there, as
    a cleanly framed short answer; a longer one sends the whole body and then closes
    the connection, short of what it announced.
    Body faults whose offset lies past the end of the body do nothing. *methods*
    restricts the fault (e.g. ``{"GET"}``); *range_start* to requests whose ``Range``
    header asks from that byte on (``bytes=N-...``; 0 also matches no Range at all),
    so one segment of a blob can be broken; *once* removes it after its first hit,
    *times* after that many hits.
    """

    match: str | re.Pattern[str]
    kind: FaultKind
    offset: int = 0
    status: int = 503
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    once: bool = False
    methods: frozenset[str] | None = None
    range_start: int | None = None
    #: How many requests this fault has been applied to.
    hits: int = 0
    #: Remove the fault after this many hits (None: never; ``once`` is ``times=1``).
    times: int | None = None
    _released: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)

    def matches(self, method: str, path_qs: str, range_header: str | None = None) -> bool:
        """True if this fault applies to a *method* request for *path_qs*."""
        if self.methods is not None and method not in self.methods:
            return False
        if self.range_start is not None and _range_start(range_header) != self.range_start:
            return False
        if isinstance(self.match, re.Pattern):
            return self.match.search(path_qs) is not None
        return self.match in path_qs

    def release(self) -> None:
        """Let stalled responses continue; later matches then pass without stalling."""
        self._released.set()


class Forwarder:
    """Forward every request to *target* (e.g. a :class:`RegistryProcess` URL).

    ``requests`` records ``(method, path_qs)`` for every request received, in order.
    ``throttle_bps`` (bytes per second, None for unlimited) paces response bodies and may
    be changed at any time, also mid-response.
    """

    def __init__(
        self,
        target: str,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        throttle_bps: float | None = None,
    ) -> None:
        self.target = URL(target)
        self.bind_host = host
        #: The listening port; with port=None it is known once start() has bound it.
        self.port = port or 0
        self.throttle_bps = throttle_bps
        self.requests: list[tuple[str, str]] = []
        #: The request headers of each entry of ``requests``, in the same order.
        self.request_headers: list[dict[str, str]] = []
        #: Requests being answered right now, and the most there ever were at once.
        self.in_flight = 0
        self.max_in_flight = 0
        #: The same by method (a blob's GETs apart from the HEADs that confirm it).
        self.in_flight_by_method: dict[str, int] = {}
        self.max_in_flight_by_method: dict[str, int] = {}
        #: ``(method, path_qs, body bytes sent)`` for every response body forwarded.
        self.bodies: list[tuple[str, str, int]] = []
        self._faults: list[Fault] = []
        # Stall faults currently holding a response (a once-fault is no longer in _faults).
        self._stalling: list[Fault] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def host(self) -> str:
        """``host:port`` of the forwarder, for image references (after start())."""
        if not self.port:
            raise RuntimeError("Forwarder has no port yet: call start() first")
        return f"{self.bind_host}:{self.port}"

    @property
    def url(self) -> str:
        """Base URL of the forwarder, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}"

    def count(self, method: str | None = None, path_substring: str = "") -> int:
        """Number of requests so far with *method* (None: any) whose path contains the text."""
        return sum(
            1 for m, p in self.requests if (method is None or m == method) and path_substring in p
        )

    def ranges(self, method: str | None = None, path_substring: str = "") -> list[str | None]:
        """The ``Range`` header (None: none) of each request like :meth:`count` selects."""
        return [
            headers.get("Range")
            for (m, p), headers in zip(self.requests, self.request_headers, strict=True)
            if (method is None or m == method) and path_substring in p
        ]

    def body_bytes(self, method: str | None = None, path_substring: str = "") -> int:
        """Response body bytes sent so far for requests like :meth:`count` selects."""
        return sum(
            n for m, p, n in self.bodies if (method is None or m == method) and path_substring in p
        )

    def set_fault(self, fault: Fault) -> Fault:
        """Add *fault* (the first matching fault wins); return it for ``hits``/``release``."""
        self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove every fault and let stalled responses finish."""
        faults, self._faults = self._faults, []
        for fault in [*faults, *self._stalling]:
            fault.release()

    def sever(self) -> int:
        """Tear down every client connection now (RST), mid-response or idle: the
        network between the client and the target breaks. Returns how many."""
        server = self._runner.server if self._runner is not None else None
        count = 0
        for handler in list(server.connections if server is not None else []):
            transport = handler.transport
            if transport is not None:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
                count += 1
        return count

    async def start(self) -> None:
        """Open the upstream session and start listening."""
        # No decompression: bytes must pass through exactly as the upstream sent them.
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        )
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: when the client goes away mid-body (or we abort the
        # connection on purpose), the handler is cancelled and the upstream response
        # is closed, instead of streaming into a dead socket.
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=5.0
        )
        await self._runner.setup()
        # Bind here (port 0 unless one was given) so there is no window between picking
        # a free port and listening on it; the site's server owns and closes the socket.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.bind_host, self.port))
            self.port = sock.getsockname()[1]
            site = web.SockSite(self._runner, sock)
            await site.start()
        except BaseException:
            sock.close()
            await self.close()
            raise

    async def close(self) -> None:
        """Release stalls, stop listening, close the upstream session; idempotent."""
        self.clear_faults()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Forwarder:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _take_fault(self, method: str, path_qs: str, range_header: str | None) -> Fault | None:
        for fault in self._faults:
            if fault.matches(method, path_qs, range_header):
                fault.hits += 1
                if fault.once or (fault.times is not None and fault.hits >= fault.times):
                    self._faults.remove(fault)
                return fault
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        method = request.method
        now = self.in_flight_by_method[method] = self.in_flight_by_method.get(method, 0) + 1
        self.max_in_flight_by_method[method] = max(self.max_in_flight_by_method.get(method, 0), now)
        try:
            return await self._forward(request)
        finally:
            self.in_flight -= 1
            self.in_flight_by_method[method] -= 1

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        self.request_headers.append(dict(request.headers))
        fault = self._take_fault(request.method, request.path_qs, request.headers.get("Range"))
        if fault is not None and fault.kind == "reset":
            _abort(request, reset=True)
            # Never sent: aiohttp finds the transport closed and drops it quietly.
            return web.Response(status=500)
        if fault is not None and fault.kind == "status":
            return web.Response(status=fault.status, headers=fault.headers, body=fault.body)
        assert self._session is not None
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if not _hop_by_hop(k, request.headers)
        )
        # Stream the request body through; no body at all when the client sent none, so
        # a GET is not turned into a chunked request.
        data = request.content if request.body_exists else None
        url = URL(str(self.target).rstrip("/") + request.raw_path, encoded=True)
        try:
            upstream = await self._session.request(
                request.method, url, headers=headers, data=data, allow_redirects=False
            )
        except aiohttp.ClientConnectionError as exc:
            # Upstream down (e.g. a test stopped the registry): answer like a gateway
            # (RFC 9110 section 15.6.3) instead of logging a handler crash.
            return web.Response(status=502, text=f"forwarder: upstream unreachable: {exc}")
        resp = self._response_head(upstream)
        if fault is not None and fault.kind == "length" and request.method != "HEAD":
            resp.headers.popall("Content-Length", None)
            if fault.offset >= 0:
                resp.headers["Content-Length"] = str(fault.offset)
        try:
            await resp.prepare(request)
            if request.method != "HEAD":
                await self._pump(request, upstream, resp, fault)
        except ConnectionResetError:
            # The client went away (aiohttp raises ClientConnectionResetError on a write
            # to a closing transport); returning lets aiohttp drop it without a traceback.
            upstream.close()
        except aiohttp.ClientError:
            # Upstream failed mid-body: the status line is gone, so the only honest
            # signal left for the client is a broken connection.
            upstream.close()
            _abort(request, reset=False)
        except BaseException:
            # Cancelled because the client left: never reuse a half-read connection.
            upstream.close()
            raise
        else:
            upstream.release()
        return resp

    def _response_head(self, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in upstream.headers.items():
            if _hop_by_hop(key, upstream.headers):
                continue
            if key.lower() == "location":
                value = self._rewrite_location(value)
            resp.headers.add(key, value)
        return resp

    async def _pump(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        resp: web.StreamResponse,
        fault: Fault | None,
    ) -> None:
        pacer = _Pacer(self)
        sent = 0
        body_fault = fault if fault is not None and fault.kind != "length" else None
        try:
            async for chunk in upstream.content.iter_chunked(CHUNK_SIZE):
                for piece in pacer.split(chunk):
                    end = sent + len(piece)
                    if body_fault is not None and sent <= body_fault.offset < end:
                        at = body_fault.offset - sent
                        if not await self._apply_body_fault(request, resp, body_fault, piece, at):
                            upstream.close()
                            return
                    else:
                        await resp.write(piece)
                    sent = end
                    await pacer.pace(len(piece))
            if fault is not None and fault.kind == "length" and fault.offset > sent:
                # Announced more than there is: end the connection short of it, or the
                # client would wait for the missing bytes until its own timeout.
                _abort(request, reset=False)
                return
            await resp.write_eof()
        finally:
            self.bodies.append((request.method, request.path_qs, sent))

    async def _apply_body_fault(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        fault: Fault,
        piece: bytes,
        at: int,
    ) -> bool:
        """Write *piece* with *fault* applied at byte *at*; False if the body must end."""
        if fault.kind == "corrupt":
            buf = bytearray(piece)
            buf[at] ^= 0xFF
            await resp.write(bytes(buf))
        elif fault.kind == "truncate":
            if at:
                await resp.write(piece[:at])
            # close(), not abort(): the bytes already written must reach the client
            # before the connection ends short of Content-Length.
            _abort(request, reset=False)
            return False
        elif fault.kind == "abort":
            if at:
                await resp.write(piece[:at])
            _abort(request, reset=True)
            return False
        elif fault.kind == "stall":
            if at:
                await resp.write(piece[:at])
            # If the client leaves meanwhile, handler_cancellation cancels us here.
            self._stalling.append(fault)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(fault._released.wait(), MAX_STALL)
            finally:
                self._stalling.remove(fault)
            await resp.write(piece[at:])
        else:
            await resp.write(piece)
        return True

    def _rewrite_location(self, value: str) -> str:
        # Distribution answers uploads with an absolute Location built from its own Host;
        # point it back at us so the whole exchange goes through the forwarder.
        location = URL(value, encoded=True)
        if location.is_absolute() and location.origin() == self.target.origin():
            return self.url + location.raw_path_qs
        return value


class _Pacer:
    """Paces writes to ``forwarder.throttle_bps``, re-reading it for every piece."""

    def __init__(self, forwarder: Forwarder) -> None:
        self._fwd = forwarder
        self._loop = asyncio.get_running_loop()
        self._bps: float | None = None
        self._t0 = 0.0
        self._sent = 0

    def split(self, chunk: bytes) -> list[bytes]:
        """Cut *chunk* into pieces of about 1/20 s each at the current rate."""
        bps = self._fwd.throttle_bps
        if not bps:
            return [chunk]
        size = max(1024, int(bps / 20))
        return [chunk[i : i + size] for i in range(0, len(chunk), size)]

    async def pace(self, n: int) -> None:
        """Account *n* bytes just written and sleep until the rate allows more."""
        bps = self._fwd.throttle_bps
        now = self._loop.time()
        if bps != self._bps:
            # Rate changed (or first piece): restart the budget from now.
            self._bps, self._t0, self._sent = bps, now, 0
        if not bps:
            return
        self._sent += n
        delay = self._t0 + self._sent / bps - now
        if delay > 0:
            await asyncio.sleep(delay)


def _range_start(header: str | None) -> int | None:
    """The first byte a ``Range: bytes=N-[M]`` asks for (no header: 0)."""
    if header is None:
        return 0
    match = re.fullmatch(r"bytes=(\d+)-\d*", header.strip())
    return int(match[1]) if match else None


def _hop_by_hop(name: str, headers: Mapping[str, str]) -> bool:
    """True for a field that applies to one connection only (RFC 9110 section 7.6.1)."""
    lower = name.lower()
    if lower in _HOP_BY_HOP:
        return True
    listed = headers.get("Connection", "")
    return lower in {token.strip().lower() for token in listed.split(",")}


def _abort(request: web.Request, *, reset: bool) -> None:
    """End the client connection without a proper HTTP ending.

    With *reset* the connection is torn down at once with an RST (unsent data is lost);
    otherwise what was written is flushed and the connection closed with a FIN. Either
    way aiohttp then sees connection_lost and, with handler_cancellation, cancels the
    handler; anything the handler still writes is discarded.
    """
    transport = request.transport
    if transport is None:
        return
    if not reset:
        transport.close()
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER with a zero timeout turns close() into an RST, not a FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
