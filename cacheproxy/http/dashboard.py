"""A small HTML dashboard served by the proxy: ``GET /dashboard`` and the JSON it reads.

The page is one self-contained file (inline CSS, inline JS, an SVG chart drawn in
the browser): nothing is fetched from the internet, so it works on an air-gapped
node. Its data is the same report ``cacheproxy report --json`` prints.
"""

from __future__ import annotations

import datetime as dt
from importlib import resources

from aiohttp import web

from ..numbers import parse_digits
from .clientauth import ANONYMOUS
from .keys import CLIENT_AUTH, SAVINGS, SUBJECT

PAGE = "dashboard.html"
MAX_DAYS = 366
DEFAULT_DAYS = 30

# Read once at import: a packaged file that never changes while the process runs.
# The page is data of the savings package, beside the report it draws.
_HTML = resources.files("cacheproxy.savings").joinpath(PAGE).read_bytes()


async def page(request: web.Request) -> web.StreamResponse:
    """The dashboard page."""
    return web.Response(
        body=_HTML,
        content_type="text/html",
        charset="utf-8",
        headers={
            # Everything is inline; forbid anything else (no third-party asset can load).
            "Content-Security-Policy": (
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline';"
                " connect-src 'self'; img-src 'self' data:"
            ),
            "Cache-Control": "no-store",
        },
    )


async def data(request: web.Request) -> web.StreamResponse:
    """The savings report for the last ``days`` UTC days (default 30), as JSON."""
    # ASCII digits: int() would take " 7", "+7", "1_0" and other scripts' digits.
    days = parse_digits(request.query.get("days", str(DEFAULT_DAYS)), 6)
    top = parse_digits(request.query.get("top", "10"), 6)
    if days is None or top is None:
        raise web.HTTPBadRequest(text="days and top must be integers")
    if not 1 <= days <= MAX_DAYS or not 1 <= top <= 100:
        raise web.HTTPBadRequest(text=f"days must be 1..{MAX_DAYS}, top 1..100")
    savings = request.app[SAVINGS]
    until = dt.datetime.now(dt.UTC).date()
    since = until - dt.timedelta(days=days - 1)
    access = request.app[CLIENT_AUTH]
    if access.rules:
        # The report sums every repository of an upstream (and prices the month's
        # volume as a whole), so it cannot be cut per client without printing wrong
        # numbers: it is shown whole, to a logged-in client allowed to pull every
        # repository it counts (the month's first days too: they set the tiers).
        counted = await savings.repositories(since.replace(day=1), until)
        access.check_viewer(request.get(SUBJECT, ANONYMOUS), counted)
    report = await savings.report(since, until, top)
    return web.json_response(report.to_json(), headers={"Cache-Control": "no-store"})
