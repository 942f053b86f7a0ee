"""Domain errors: the standard exception each one also is, and the catches of those
standard exceptions that must not take a domain error for something else."""

from __future__ import annotations

import hashlib
import inspect
from types import SimpleNamespace
from typing import cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cacheproxy import errors
from cacheproxy.accounting import NullAccounting, Origin
from cacheproxy.blobs.service import BlobService
from cacheproxy.blobs.source import Body, Sink, Want
from cacheproxy.commands import serve
from cacheproxy.config import load_config
from cacheproxy.errors import RegistryError, UpstreamUnavailable
from cacheproxy.http import handlers
from cacheproxy.oci import Route
from cacheproxy.store.usage import UsageLog
from cacheproxy.upstream.client import Upstream

# What each domain error is besides a RegistryError (errors.py's docstring says why).
BASES: dict[type[RegistryError], type[Exception] | None] = {
    errors.NameInvalid: ValueError,
    errors.NameUnknown: LookupError,
    errors.DigestInvalid: ValueError,
    errors.ManifestInvalid: ValueError,
    errors.ManifestUnknown: LookupError,
    errors.BlobUnknown: LookupError,
    errors.Unauthorized: PermissionError,
    errors.Denied: PermissionError,
    errors.Unsupported: None,
    errors.NotFound: LookupError,
    errors.RangeNotSatisfiable: ValueError,
    errors.TooManyRequests: None,
    errors.PreconditionFailed: None,
    errors.PayloadTooLarge: ValueError,
    errors.BadRequest: ValueError,
    errors.UpstreamUnavailable: ConnectionError,
    errors.CredentialsUnavailable: ConnectionError,
    errors.DestinationRefused: ConnectionError,
    errors.CacheWriteFailed: OSError,
    errors.FilesExhausted: OSError,
    errors.UpstreamBadContent: ValueError,
}
STANDARD = (ValueError, LookupError, OSError)


def test_every_domain_error_has_its_standard_base_pinned() -> None:
    defined = {
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, RegistryError) and cls is not RegistryError
    }
    assert defined == set(BASES)  # a new error chooses its base here, on purpose
    for cls, base in BASES.items():
        err = cls("message", headers={"Retry-After": "1"})
        if base is None:
            assert not isinstance(err, STANDARD), cls
        else:
            assert isinstance(err, base), cls
        # A not-found answer is no missing dict key: ``except KeyError`` never takes it.
        assert not isinstance(err, KeyError)
        # The OSError kinds keep the error's own message, code and status.
        assert str(err) == err.message == "message"
        assert err.headers == {"Retry-After": "1"}
        assert err.to_json()["errors"] == [{"code": cls.code, "message": "message"}]


class _BreaksMidBody:
    """A blob body that sends half its bytes, then fails as a fill whose upstream
    went away does."""

    origin: Origin = "upstream"
    location = None

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def size(self) -> int | None:
        return len(self._data)

    async def final_size(self) -> int:
        return len(self._data)

    async def send(self, sink: Sink, start: int, end: int | None) -> None:
        await sink.write(self._data[: len(self._data) // 2])
        raise UpstreamUnavailable("upstream broke off the blob")

    def close(self) -> None:
        pass

    def vouches(self, upstream: str, repo: str) -> bool:
        return True


class _Chain:
    def __init__(self, body: Body) -> None:
        self._body = body

    async def open(self, want: Want, first: int = 0) -> Body:
        return self._body

    async def size(self, want: Want) -> int:
        return await self._body.final_size()


async def test_a_body_failing_mid_send_still_breaks_the_connection() -> None:
    """An UpstreamUnavailable is a ConnectionError now, and ConnectionError from the
    sink means the client left: the failure must still end the connection short
    (never a clean end of a short body), as before."""
    data = b"x" * 200_000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs = BlobService(_Chain(_BreaksMidBody(data)), UsageLog(), NullAccounting())
    up = cast(Upstream, SimpleNamespace(name="registry.test"))

    async def handler(request: web.Request) -> web.StreamResponse:
        return await handlers.send_blob(request, blobs, up, Route("blob", "app", digest))

    app = web.Application()
    app.router.add_get("/blob", handler)
    # Bounded: a short body on a connection kept open would wait here for ever.
    bound = aiohttp.ClientTimeout(total=30)
    async with (
        TestClient(TestServer(app, host="127.0.0.1")) as client,
        client.get("/blob", timeout=bound) as resp,
    ):
        assert resp.status == 200 and resp.content_length == len(data)
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


def test_serve_passes_a_domain_error_at_start_on_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``serve`` reports an OSError at start as a port or cache directory it cannot
    use; an UpstreamUnavailable (an OSError now) goes on to cli.main, as before."""

    async def fails(*args: object) -> None:
        raise UpstreamUnavailable("no upstream at start")

    monkeypatch.setattr(serve, "build_app", lambda config: None)
    monkeypatch.setattr(serve.server, "run", fails)
    with pytest.raises(UpstreamUnavailable):
        serve.run(load_config(env={}, flags={}))
