"""Turns every error into the OCI error JSON, and stamps the API version header."""

from __future__ import annotations

import json
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import NotFound, RegistryError, Unsupported
from .keys import CLIENT_AUTH, NAMESPACE, SUBJECT

log = logging.getLogger(__name__)

API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")


def error_response(err: RegistryError, head: bool = False) -> web.Response:
    """The spec's ``{"errors": [...]}`` body with the error's status and headers."""
    body = json.dumps(err.to_json()).encode()
    headers = dict(err.headers)
    if head:
        headers["Content-Length"] = str(len(body))
    return web.Response(
        status=err.status,
        body=None if head else body,
        content_type="application/json",
        headers=headers,
    )


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
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return error_response(RegistryError("internal error"), head)


async def stamp_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault(*API_VERSION)
    ns = request.get(NAMESPACE)
    if ns is not None:
        # The spec's proxying text: a registry that honours ``ns`` echoes it.
        response.headers["OCI-Namespace"] = ns


# Answered without client authentication: the probes (the kubelet sends no
# credentials) and the peer path, which carries its own HMAC. Everything else,
# /metrics and the cluster view (/_cacheproxy/peers) included, needs a login when
# anonymous access is off: they name upstreams, ECR account IDs and members.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
PEER_PATHS = "/_cacheproxy/peer/"


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    policy = request.app[CLIENT_AUTH]
    path = request.path
    if policy.active and path not in OPEN_PATHS and not path.startswith(PEER_PATHS):
        request[SUBJECT] = await policy.identify(request.headers.get("Authorization"))
    return await handler(request)
