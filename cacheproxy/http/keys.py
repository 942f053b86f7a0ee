"""Typed application keys: the services handlers call, one key each."""

from __future__ import annotations

from aiohttp import web

from ..blobs.inflight import Fills
from ..blobs.service import BlobService
from ..lifecycle.keeper import Keeper
from ..manifests.listing import TagLister
from ..manifests.referrers import Referrers
from ..manifests.service import ManifestService
from ..metrics import Metrics
from ..peers.cluster import Cluster
from ..rates import Rate, Rates
from ..savings.service import Savings
from ..shared.tier import SharedTier
from ..shared.writeback import WriteBack
from ..store.files import BlobStore
from ..store.readiness import Readiness
from ..swarm.holdings import Holdings
from ..upstream.pool import UpstreamPool
from ..wire import CLOSE_CONNECTION, CONNECTION_GONE
from .clientauth import ClientAuth

BLOBS = web.AppKey("blobs", BlobService)
MANIFESTS = web.AppKey("manifests", ManifestService)
TAG_LISTS = web.AppKey("tag_lists", TagLister)
REFERRERS = web.AppKey("referrers", Referrers)
UPSTREAMS = web.AppKey("upstreams", UpstreamPool)
# Downloads in flight (their counters feed /metrics).
FILLS = web.AppKey("fills", Fills)
# What the cluster's other nodes are answered with (cluster mode only).
PEER_BLOBS = web.AppKey("peer_blobs", BlobService)
PEER_MANIFESTS = web.AppKey("peer_manifests", ManifestService)
CLUSTER = web.AppKey("cluster", Cluster)
# The swarm (cluster mode with peer_holders): the holder lists this node keeps as
# owner, its upload bound; and the chain that answers a peer's piece request.
HOLDINGS = web.AppKey("holdings", Holdings)
PEER_PIECES = web.AppKey("peer_pieces", BlobService)
KEEPER = web.AppKey("keeper", Keeper)
# The blobs on this node's disk (what a preheat checks it kept).
STORE = web.AppKey("store", BlobStore)
READINESS = web.AppKey("readiness", Readiness)
METRICS = web.AppKey("metrics", Metrics)
CLIENT_AUTH = web.AppKey("client_auth", ClientAuth)
# What the cache saved (the dashboard).
SAVINGS = web.AppKey("savings", Savings)
# The shared tier and its uploads ([shared] only).
SHARED = web.AppKey("shared", SharedTier)
WRITEBACK = web.AppKey("writeback", WriteBack)
# The ``ns`` a request named, echoed back as ``OCI-Namespace``.
NAMESPACE = web.RequestKey("namespace", str)
# Who the client is (see http.clientauth); "anonymous" when it sent no credentials.
SUBJECT = web.RequestKey("subject", str)
# The bandwidth limits (their buckets, shared by every transfer of a kind).
RATES = web.AppKey("rates", Rates)
# The limit a response's body is sent under (a peer's upload: peer_upload_rate).
SEND_RATE = web.RequestKey("send_rate", Rate)
# When a client's registry request came in (the first-byte histogram's start).
STARTED = web.RequestKey("started", float)
# Keys about the request's connection, shared with connections/ (see wire.py).
__all__ = ["CLOSE_CONNECTION", "CONNECTION_GONE", "STARTED"]
