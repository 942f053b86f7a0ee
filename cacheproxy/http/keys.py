"""Typed application keys: the shared state handlers reach through the app."""

from __future__ import annotations

from aiohttp import web

from ..metrics import Metrics
from ..proxy import Proxy
from ..store.housekeeping import Housekeeper
from .access import AccessPolicy

PROXY = web.AppKey("proxy", Proxy)
METRICS = web.AppKey("metrics", Metrics)
HOUSEKEEPER = web.AppKey("housekeeper", Housekeeper)
# The ``ns`` a request named, echoed back as ``OCI-Namespace``.
NAMESPACE = web.RequestKey("namespace", str)
ACCESS = web.AppKey("access", AccessPolicy)
# Who the client is (see http.access); "anonymous" when it sent no credentials.
SUBJECT = web.RequestKey("subject", str)
