"""The probes and /metrics: what the kubelet and Prometheus ask."""

from __future__ import annotations

from aiohttp import web

from ..metrics import CONTENT_TYPE
from .keys import METRICS, READINESS


async def metrics(request: web.Request) -> web.StreamResponse:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def healthz(request: web.Request) -> web.StreamResponse:
    """The process is alive and its loop answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    """Ready to serve: the cache directory is writable and the index answers."""
    problems = await request.app[READINESS].problems()
    if problems:
        return web.json_response({"status": "unready", "problems": problems}, status=503)
    return web.json_response({"status": "ready"})
