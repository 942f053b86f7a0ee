"""A catalogue of malformed HTTP/1.1 exchanges, by category, for raw-socket tests.

Each :class:`RawCase` is bytes to send (optionally in pieces, paced) and what a
hardened server must do with them: refuse ("reject": a 4xx, or the connection closed
without an answer), answer without a server error ("answer": odd but legal input), or
answer the valid requests in front and refuse what follows ("ok-then-reject"). The
slow-loris cases assume the server under test runs with ``client_header_timeout`` set
to :data:`HEADER_TIMEOUT`.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

HEADER_TIMEOUT = 1.0
RAW_BOUND = 5.0
SMUGGLED = b"GET /v2/smuggled/manifests/x HTTP/1.1\r\nHost: x\r\n\r\n"
OK = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"


def _req(head: bytes, *headers: bytes, body: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    lines = [head + b" " + version, *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@dataclass(frozen=True)
class RawCase:
    """One malformed exchange. ``expect``: "reject" (a 4xx, or closed with no answer),
    "answer" (odd but legal: any non-5xx answer), or "ok-then-reject" (at most ``n``
    200s for the valid requests in front, then refused). ``linger``: how long to wait
    after the last answer for more (or for the server to close)."""

    category: str
    name: str
    payload: bytes | tuple[bytes, ...]
    expect: str = "reject"
    n: int = 0
    gap: float = 0.0
    bound: float = RAW_BOUND
    linger: float = 0.25

    @property
    def pieces(self) -> tuple[bytes, ...]:
        return self.payload if isinstance(self.payload, tuple) else (self.payload,)


def _smuggling() -> list[RawCase]:
    body = b"0\r\n\r\n" + SMUGGLED
    cl = b"Content-Length: %d" % len(body)
    te = b"Transfer-Encoding: chunked"
    host = b"Host: x"
    get = b"GET /v2/"
    cases = {
        "CL.TE": _req(get, host, cl, te, body=body),
        "TE.CL": _req(
            get, host, te, b"Content-Length: 4", body=b"5c\r\n" + SMUGGLED + b"0\r\n\r\n"
        ),
        "CL twice, different": _req(get, host, b"Content-Length: 0", cl, body=SMUGGLED),
        "CL twice, same": _req(
            get, host, b"Content-Length: 0", b"Content-Length: 0", body=SMUGGLED
        ),
        "CL +N": _req(get, host, b"Content-Length: +%d" % len(SMUGGLED), body=SMUGGLED),
        "CL -1": _req(get, host, b"Content-Length: -1", body=SMUGGLED),
        "CL hex": _req(get, host, b"Content-Length: 0x10", body=SMUGGLED),
        "CL list": _req(get, host, b"Content-Length: 0, %d" % len(SMUGGLED), body=SMUGGLED),
        "CL overflow": _req(get, host, b"Content-Length: " + b"9" * 30, body=SMUGGLED),
        "CL with space inside": _req(get, host, b"Content-Length: 1 0", body=SMUGGLED),
        "TE xchunked": _req(get, host, b"Transfer-Encoding: xchunked", body=body),
        "TE chunked, gzip": _req(get, host, b"Transfer-Encoding: chunked, gzip", body=body),
        "TE identity + CL": _req(get, host, b"Transfer-Encoding: identity", cl, body=body),
        "TE space before colon": _req(get, host, b"Transfer-Encoding : chunked", cl, body=body),
        "TE obs-fold": _req(get, host, b"Transfer-Encoding:\r\n chunked", cl, body=body),
        "TE vertical tab": _req(get, host, b"Transfer-Encoding: \x0bchunked", body=body),
        "TE twice": _req(get, host, te, te, body=body),
        "TE on HTTP/1.0": _req(get, host, te, body=body, version=b"HTTP/1.0"),
        "TE with NUL in name": _req(get, host, b"Transfer\x00Encoding: chunked", cl, body=body),
        "CL with NUL": _req(get, host, b"Content-Length: 5\x00", body=body),
    }
    return [RawCase("smuggling", k, v) for k, v in cases.items()]


def _chunks() -> list[RawCase]:
    head = b"POST /v2/a/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    bodies = {
        "size zz": b"zz\r\nabc\r\n0\r\n\r\n",
        "size -1": b"-1\r\nabc\r\n0\r\n\r\n",
        "size overflow": b"f" * 24 + b"\r\nabc\r\n0\r\n\r\n",
        "data shorter than size": b"5\r\nabc\r\n0\r\n\r\n",
        "data longer than size": b"2\r\nabcdef\r\n0\r\n\r\n",
        "size 0x5": b"0x5\r\nabcde\r\n0\r\n\r\n",
        "size with space": b"5 5\r\nabcde\r\n0\r\n\r\n",
        "NUL in extension": b"5;a=\x00\r\nabcde\r\n0\r\n\r\n",
        "bare LF": b"5\nabcde\n0\n\n",
        "missing CRLF after data": b"5\r\nabcde0\r\n\r\n",
        "bad trailer": b"0\r\nBad Trailer\r\n\r\n",
        "empty size line": b"\r\nabc\r\n0\r\n\r\n",
    }
    return [RawCase("bad chunks", k, head + v) for k, v in bodies.items()]


def _headers() -> list[RawCase]:
    get, host = b"GET /v2/", b"Host: x"
    cases = {
        "10,000 headers": _req(get, host, *[b"X-A: b"] * 10_000),
        "100,000 headers": _req(get, host, *[b"X-A: b"] * 100_000),
        "100 KiB value": _req(get, host, b"X-A: " + b"a" * 100_000),
        "10 KiB name": _req(get, host, b"a" * 10_000 + b": b"),
        "1 MiB request line": _req(b"GET /v2/" + b"a" * (1 << 20), host),
        "8191-byte value": _req(get, host, b"X-A: " + b"a" * 8191),
        "no colon": _req(get, host, b"NoColonHere"),
        "empty name": _req(get, host, b": value"),
        "two Host": _req(get, b"Host: a", b"Host: b"),
        "no Host": _req(get),
        "header block never ends": b"GET /v2/ HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 20_000,
    }
    return [RawCase("absurd headers", k, v) for k, v in cases.items()]


def _bytes() -> list[RawCase]:
    host = b"Host: x"
    reject = {
        "NUL in path": _req(b"GET /v2/\x00", host),
        "NUL in header value": _req(b"GET /v2/", host, b"X-A: a\x00b"),
        "UTF-8 in path": _req("GET /v2/ä/manifests/latest".encode(), host),
        "UTF-8 in header name": _req(b"GET /v2/", host, "X-ä: a".encode()),
        "DEL in path": _req(b"GET /v2/\x7f", host),
        "control byte in path": _req(b"GET /v2/\x01", host),
        "bare CR in header": _req(b"GET /v2/", b"Host: x\rX-A: b"),
        "high bytes in method": _req(b"G\xc3\xa9T /v2/", host),
        "tab in path": _req(b"GET /v2/\tx", host),
        "CR in request line": _req(b"GET /v2/\rx", host),
    }
    answer = {
        "obs-text in header value": _req(b"GET /v2/", host, b"X-A: \xe4\xf6\xfc"),
        "bare LF line ends": b"GET /v2/ HTTP/1.1\nHost: x\n\n",
    }
    return [RawCase("non-ASCII and NUL", k, v) for k, v in reject.items()] + [
        RawCase("non-ASCII and NUL", k, v, expect="answer") for k, v in answer.items()
    ]


def _pipelined() -> list[RawCase]:
    rng = random.Random(20261127)
    cases = [
        RawCase(
            "pipelined garbage",
            "valid, then binary",
            OK + b"\x00\x01\x02garbage\r\n\r\n",
            "ok-then-reject",
            1,
        ),
        RawCase(
            "pipelined garbage",
            "3 valid, then a bad line",
            OK * 3 + b"GARBAGE\r\n\r\n",
            "ok-then-reject",
            3,
        ),
        RawCase("pipelined garbage", "garbage, then valid", b"GARBAGE\r\n\r\n" + OK),
        RawCase(
            "pipelined garbage",
            "valid, then 64 KiB of zeros",
            OK + b"\x00" * 65536,
            "ok-then-reject",
            1,
        ),
        RawCase("pipelined garbage", "HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        RawCase(
            "pipelined garbage",
            "TLS ClientHello",
            bytes.fromhex("16030100a5010000a10303") + bytes(160),
        ),
        RawCase("pipelined garbage", "SSH banner", b"SSH-2.0-OpenSSH_9.2\r\n"),
    ]
    for i in range(16):
        junk = rng.randbytes(rng.randint(1, 4096))
        if junk[:1].isalpha():
            junk = b"\xff" + junk  # never a plausible method by accident
        cases.append(RawCase("pipelined garbage", f"random bytes #{i}", junk))
    return cases


def _request_lines() -> list[RawCase]:
    host = b"Host: x"
    reject = {
        "HTTP/9.9": _req(b"GET /v2/", host, version=b"HTTP/9.9"),
        "HTTP/1.1.1": _req(b"GET /v2/", host, version=b"HTTP/1.1.1"),
        "no version": b"GET /v2/ \r\nHost: x\r\n\r\n",
        "lowercase method": _req(b"get /v2/", host),
        "1000-byte method": _req(b"A" * 1000 + b" /v2/", host),
        "target without slash": _req(b"GET v2/", host),
        "empty target": _req(b"GET ", host),
        "trailing words": b"GET /v2/ HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    }
    answer = {
        "absolute-form": _req(b"GET http://elsewhere.example/v2/", host),
        "CONNECT authority-form": _req(
            b"CONNECT elsewhere.example:443", b"Host: elsewhere.example"
        ),
        "OPTIONS *": _req(b"OPTIONS *", host),
        "HTTP/1.0": _req(b"GET /v2/", host, version=b"HTTP/1.0"),
        "HTTP/2.0 on HTTP/1": _req(b"GET /v2/", host, version=b"HTTP/2.0"),
        "HTTP/0.9 style": b"GET /v2/\r\n\r\n",
        # RFC 9112 section 3: recipients MAY split the request line on any whitespace.
        "two spaces": b"GET  /v2/  HTTP/1.1\r\nHost: x\r\n\r\n",
        "unknown method": _req(b"BREW /v2/", host),
        "TRACE": _req(b"TRACE /v2/", host),
    }
    return [RawCase("request lines", k, v) for k, v in reject.items()] + [
        RawCase("request lines", k, v, expect="answer") for k, v in answer.items()
    ]


def _fuzzed() -> list[RawCase]:
    """Seeded mutations of a valid blob request: each may still be valid (answered) or
    not (refused), never a 5xx."""
    rng = random.Random(8)
    base = (
        b"GET /v2/hostile/app/blobs/sha256:" + b"0" * 64 + b" HTTP/1.1\r\nHost: x\r\n"
        b"Accept: */*\r\nRange: bytes=0-10\r\n\r\n"
    )
    cases = []
    for i in range(40):
        buf = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(buf))
            op = rng.randrange(3)
            if op == 0:
                buf[at] = rng.randrange(256)
            elif op == 1:
                del buf[at]
            else:
                buf.insert(at, rng.randrange(256))
        if not buf.endswith(b"\r\n\r\n"):
            buf += b"\r\n\r\n"
        cases.append(RawCase("fuzzed request", f"mutant #{i}", bytes(buf), expect="answer"))
    return cases


def _slow() -> list[RawCase]:
    partial = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40
    trickle = tuple(bytes([b]) for b in partial)
    bound = HEADER_TIMEOUT + 3.0
    # Wait for the server to close: lingering as long as the bound itself.
    return [
        RawCase("slow-loris", "silent connection", (), bound=bound, linger=bound),
        RawCase("slow-loris", "partial head, then silence", (partial,), bound=bound, linger=bound),
        RawCase(
            "slow-loris",
            "head trickled a byte per 0.2 s",
            trickle,
            gap=0.2,
            bound=bound,
            linger=bound,
        ),
        RawCase(
            "slow-loris",
            "second request's head trickled on a kept-alive connection",
            (OK, *trickle),
            expect="ok-then-reject",
            n=1,
            gap=0.2,
            bound=bound + 0.2,
            linger=bound,
        ),
        RawCase(
            "slow-loris",
            "second request's head left partial on a kept-alive connection",
            (OK, partial),
            expect="ok-then-reject",
            n=1,
            gap=0.2,
            bound=bound + 0.2,
            linger=bound,
        ),
        RawCase(
            "slow-loris",
            "body trickled after the head",
            (b"POST /v2/a/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",)
            + (b"a",) * 200,
            expect="answer",
            gap=0.2,
            # aiohttp reads an unread body for up to 10 s after answering, then closes.
            bound=15.0,
            linger=15.0,
        ),
    ]


RAW: list[RawCase] = [
    *_smuggling(),
    *_chunks(),
    *_headers(),
    *_bytes(),
    *_pipelined(),
    *_request_lines(),
    *_fuzzed(),
    *_slow(),
]
#: Malformed-HTTP cases per category.
RAW_CASES: dict[str, int] = dict(Counter(c.category for c in RAW))
