"""Turns every error into the OCI error JSON, and stamps the API version header."""

from __future__ import annotations

import errno
import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from ..errors import BadRequest, FilesExhausted, NotFound, RegistryError, Unsupported
from ..fairness import client_address
from ..wire import OPEN_PATHS, error_response
from .keys import CLIENT_AUTH, NAMESPACE, SUBJECT
from .operator import OPERATOR, OPERATOR_PATHS

log = logging.getLogger(__name__)

API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")
# Out of file descriptors (the process's limit, the system's): the request could not
# open what it needed, and a moment later it can.
NO_FILES = (errno.EMFILE, errno.ENFILE)
RETRY_AFTER = {"Retry-After": "1"}


@web.middleware
async def oci_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    head = request.method == "HEAD"
    try:
        return await handler(request)
    except RegistryError as err:
        return error_response(err, head)
    except web.HTTPMethodNotAllowed:
        return error_response(Unsupported("method not allowed"), head)
    except web.HTTPNotFound:
        return error_response(NotFound("unknown path"), head)
    except web.HTTPException as exc:
        if exc.status >= 400:
            other = RegistryError(exc.reason)
            other.status = exc.status
            other.code = "UNSUPPORTED" if exc.status < 500 else "UNKNOWN"
            return error_response(other, head)
        raise
    except OSError as exc:
        if exc.errno not in NO_FILES:
            log.exception("unexpected error answering %s %s", request.method, request.path)
            return error_response(RegistryError("internal error"), head)
        log.warning("no file descriptor free answering %s: %s", request.path[:200], exc.strerror)
        return error_response(FilesExhausted(headers=RETRY_AFTER), head)
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return error_response(RegistryError("internal error"), head)


class _OciProtocolErrors(RequestHandler):
    """aiohttp's protocol, answering what its HTTP parser refuses as OCI error JSON.

    A request line aiohttp cannot parse (a non-ASCII path, a line past 8 KiB, an
    unknown method) never reaches the app or its middleware: the protocol answers
    it itself in ``handle_error``, with text/plain quoting the offending bytes, and
    has no setting for that answer. This subclass adds no state (``__slots__`` is
    empty), so a handler aiohttp built can take it as its class:
    :func:`protocol_errors_as_oci` does that for each connection, without having
    to rebuild handlers from the private arguments aiohttp's ``Server`` keeps.
    """

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started: no error answer is possible")
        if isinstance(exc, HttpProcessingError):
            # Garbage from the network is expected input, not a bug: one line, no
            # traceback (the reason as repr: control bytes cannot forge log lines),
            # and nothing of the input echoed back to the client.
            reason = str(exc.message).strip()[:120]
            log.warning("malformed request refused: %s %r", type(exc).__name__, reason)
            err: RegistryError = BadRequest("malformed request")
            err.status = status if 400 <= status < 500 else 400
        else:
            self.log_exception("Error handling request", exc_info=exc)
            err = RegistryError("internal error")
        response = error_response(err)
        response.force_close()
        return response


def protocol_errors_as_oci(handler: RequestHandler) -> RequestHandler:
    """One connection's aiohttp protocol, with parse errors answered as OCI JSON."""
    handler.__class__ = _OciProtocolErrors
    return handler


async def stamp_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault(*API_VERSION)
    ns = request.get(NAMESPACE)
    if ns is not None:
        # The spec's proxying text: a registry that honours ``ns`` echoes it.
        response.headers["OCI-Namespace"] = ns


# Answered without client authentication: the probes (the kubelet sends no
# credentials) and the peer path, which carries its own HMAC. /metrics and the
# cluster view (/_cacheproxy/peers) have a rule of their own (http/operator.py),
# whatever anonymous pulls are allowed: they name upstreams, ECR account IDs and
# members. Everything else needs a login when anonymous access is off.
PEER_PATHS = "/_cacheproxy/peer/"


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    policy = request.app[CLIENT_AUTH]
    path = request.path
    if path in OPERATOR_PATHS:
        await request.app[OPERATOR].check(request, policy)
    elif policy.active and path not in OPEN_PATHS and not path.startswith(PEER_PATHS):
        # The address is who a new login's password check is counted for: one
        # address gets a share of the checks, not all of them.
        address = client_address(request.remote)
        request[SUBJECT] = await policy.identify(request.headers.get("Authorization"), address)
    return await handler(request)
