"""A blocking raw-socket HTTP/1.1 client for tests that send what no library would.

:func:`exchange` writes arbitrary bytes (optionally in slow pieces) to a server and
reads back every response it sends, until the server closes the connection, a quiet
period passes after the last response, or a hard time bound is reached: it never
hangs. :func:`request` is the one-request convenience for well-formed but hostile
requests (any path, any header bytes). Blocking sockets keep it usable from
synchronous code such as hypothesis properties; never call it on the event loop
that runs the server under test.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: Bytes read from the socket per ``recv``.
RECV_SIZE = 256 * 1024
#: Longest response head (status line and headers) accepted from a server.
MAX_HEAD = 256 * 1024


class ServerClosed(Exception):
    """The connection ended (FIN or RST) before a complete response."""


@dataclass
class RawResponse:
    """One parsed HTTP response."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header *name* (case-insensitive), or None."""
        lower = name.lower()
        for key, value in self.headers:
            if key.lower() == lower:
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Exchange:
    """What came back for the bytes sent on one connection."""

    responses: list[RawResponse] = field(default_factory=list)
    #: The server ended the connection (FIN or RST).
    closed: bool = False
    reset: bool = False
    #: The hard bound passed with the connection still open.
    timed_out: bool = False
    #: Bytes received after the last complete response (a torn response).
    leftover: bytes = b""
    elapsed: float = 0.0

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]

    def rejected(self) -> bool:
        """Refused: the first answer is a 4xx, or the server closed without answering."""
        if self.responses:
            return 400 <= self.responses[0].status < 500
        return self.closed


class _Conn:
    """A socket with a receive buffer and an absolute deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buf = bytearray()
        self.eof = False
        self.reset = False

    def fill(self, until: float | None = None) -> bool:
        """Receive more bytes; False on EOF/RST. Raises TimeoutError at the deadline
        (or at *until*, if earlier)."""
        if self.eof:
            return False
        stop = min(self.deadline, until) if until is not None else self.deadline
        left = stop - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(RECV_SIZE)
        except TimeoutError:
            raise
        except ConnectionResetError:
            self.eof = self.reset = True
            return False
        except OSError:
            self.eof = True
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def line(self) -> bytes:
        while True:
            at = self.buf.find(b"\n")
            if at >= 0:
                out = bytes(self.buf[: at + 1])
                del self.buf[: at + 1]
                return out
            if len(self.buf) > MAX_HEAD:
                raise ValueError("response head too long")
            if not self.fill():
                raise ServerClosed

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self.fill():
                raise ServerClosed
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def rest(self) -> bytes:
        while self.fill():
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out


def _read_response(conn: _Conn, head_request: bool) -> RawResponse:
    status_line = conn.line()
    while status_line in (b"\r\n", b"\n"):
        status_line = conn.line()
    parts = status_line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP status line: {status_line[:100]!r}")
    status, reason = int(parts[1]), parts[2] if len(parts) > 2 else ""
    headers: list[tuple[str, str]] = []
    while True:
        raw = conn.line().decode("latin-1").rstrip("\r\n")
        if not raw:
            break
        key, _, value = raw.partition(":")
        headers.append((key.strip(), value.strip()))
    response = RawResponse(status, reason, headers, b"")
    if head_request or status in (204, 304) or 100 <= status < 200:
        return response
    if (response.header("Transfer-Encoding") or "").lower().endswith("chunked"):
        body = bytearray()
        while True:
            size = int(conn.line().split(b";")[0].strip(), 16)
            if size == 0:
                while conn.line() not in (b"\r\n", b"\n"):
                    pass
                break
            body += conn.exact(size)
            conn.exact(2)
        response.body = bytes(body)
    elif response.header("Content-Length") is not None:
        response.body = conn.exact(int(response.header("Content-Length") or "0"))
    else:
        response.body = conn.rest()
    return response


def exchange(
    address: tuple[str, int],
    payload: bytes | Sequence[bytes],
    *,
    bound: float = 10.0,
    gap: float = 0.0,
    linger: float = 0.25,
    head: bool = False,
    max_responses: int = 16,
) -> Exchange:
    """Send *payload* (a sequence: pieces sent *gap* seconds apart) and collect answers.

    Reading stops when the server closes the connection, *linger* seconds after the
    last complete response with nothing more arriving, after *max_responses*, or at
    *bound* seconds from the start (``timed_out``). *head*: the answers are to HEAD
    requests (no bodies).
    """
    started = time.monotonic()
    deadline = started + bound
    pieces = [payload] if isinstance(payload, bytes) else list(payload)
    out = Exchange()
    sock = socket.create_connection(address, timeout=min(bound, 5.0))
    try:
        conn = _Conn(sock, deadline)
        for i, piece in enumerate(pieces):
            if time.monotonic() >= deadline:
                break
            if i and gap:
                # Keep reading while we pace: the server may answer or close meanwhile.
                pause_until = time.monotonic() + gap
                while time.monotonic() < pause_until and not conn.eof:
                    try:
                        conn.fill(until=pause_until)
                    except TimeoutError:
                        break
                if conn.eof:
                    break
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                conn.eof = True
                break
        while len(out.responses) < max_responses:
            if not conn.buf:
                # Wait for the next response to start: at most `linger` once one came.
                until = time.monotonic() + linger if out.responses else None
                try:
                    if not conn.fill(until=until):
                        break
                except TimeoutError:
                    out.timed_out = time.monotonic() >= deadline
                    break
            try:
                out.responses.append(_read_response(conn, head))
            except ServerClosed:
                break
            except TimeoutError:
                out.timed_out = True
                break
        out.closed = conn.eof
        out.reset = conn.reset
        out.leftover = bytes(conn.buf)
    finally:
        sock.close()
    out.elapsed = time.monotonic() - started
    return out


def request(
    address: tuple[str, int],
    method: str,
    target: bytes | str,
    headers: Sequence[tuple[bytes | str, bytes | str]] = (),
    *,
    bound: float = 10.0,
) -> RawResponse:
    """One request on its own connection (``Connection: close``); its response.

    *target* and header values are sent as given (str as latin-1), with no encoding
    or validation. Raises AssertionError if no complete response arrives within
    *bound* seconds.
    """
    lines = [_b(method) + b" " + _b(target) + b" HTTP/1.1", b"Host: " + _host(address)]
    lines += [_b(k) + b": " + _b(v) for k, v in headers]
    lines.append(b"Connection: close")
    raw = b"\r\n".join(lines) + b"\r\n\r\n"
    result = exchange(address, raw, bound=bound, head=method == "HEAD", max_responses=1)
    if result.timed_out:
        raise AssertionError(f"no answer within {bound} s to {method} {target!r}")
    if not result.responses:
        raise AssertionError(f"connection closed without an answer to {method} {target!r}")
    return result.responses[0]


def _b(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def _host(address: tuple[str, int]) -> bytes:
    return f"{address[0]}:{address[1]}".encode()
