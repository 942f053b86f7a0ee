"""Who may be served what: a digest under an (upstream, repository) pair.

Bytes are stored once per digest, but a digest is served under a repository only
when that upstream has vouched for it there (distribution does the same with its
per-repository links). A digest is not a secret: it appears in pod status, CI logs,
SBOMs and this proxy's own log lines. A pair is linked when the upstream itself
answered for the digest there:

- a fetch under that repository (a fill, a manifest GET by digest), directly or
  through a cluster node or the bucket that applied this rule for the same pair,
- a tag resolved there naming it (the upstream's own answer, or a peer's signed one),
- or a confirmation: a HEAD under that repository, asked with the proxy's own
  credentials (a HEAD is not a pull for Docker Hub).

What a manifest *names* is never a link. Anyone who may push somewhere can write a
manifest, and a registry stores a ``subject`` or a ``blobs`` list without checking
them (distribution-spec 1.1: a registry MUST accept a ``subject`` that does not
exist). Even the descriptors a registry does check (``config``, ``layers``, an
index's ``manifests``) are a hint at most, since a registry can be lax: content held
under another pair is confirmed with one HEAD under the asking pair before it is
served there the first time, as if the manifest had named nothing.

A request for an unlinked pair whose digest this node does not hold needs no
confirmation: the fetch that follows asks the upstream under that repository, and
its answer is the rule. Where that fetch would ask someone else first (a peer in
a cluster, the shared bucket) the pair is confirmed first, held or not. Either way a
refused pair costs one upstream request and moves the same counters whatever the
cache holds: /metrics is no oracle either. Offline, only links count.

A link is the upstream's word at the time it was given: after ``link_ttl`` seconds
it is confirmed again before it serves (a repository made private, an image
deleted). While the upstream cannot answer, an old link still serves (the proxy
keeps serving what it was allowed to when the upstream is down); a refusal drops it.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Literal

from .errors import (
    REFUSALS,
    BlobUnknown,
    Denied,
    DigestInvalid,
    ManifestUnknown,
    RegistryError,
    TooManyRequests,
    Unauthorized,
    UpstreamUnavailable,
)
from .oci import MANIFEST_TYPES, Digest, parse_digest, references
from .singleflight import SingleFlight
from .store.files import BlobStore
from .store.index import Index
from .upstream.client import Upstream, error_for_status, pull_scope

log = logging.getLogger(__name__)

Kind = Literal["blob", "manifest"]
# A refused pair is remembered this long (the upstream is asked again after it),
NEGATIVE_TTL = 10.0
# and this many refused pairs at most.
NEGATIVE_MAX = 10_000
# Seconds a link serves before the upstream is asked again (the ``link_ttl`` setting).
LINK_TTL = 24 * 3600.0
# (pair, digest) hints remembered (a pull's layers, named by the manifest it pulled),
# and manifests whose references were taken as hints, in this process.
HINTS_MAX = 200_000
EXPANDED_MAX = 50_000
# References of one manifest followed at most when links are derived from a bundle
# or an old cache (an index of a few hundred platforms is large; tens of thousands
# is an attack on the index's size).
MAX_REFERENCES = 4096
# A body past this is not a manifest worth parsing for references.
MANIFEST_LIMIT = 4 * 1024 * 1024


def pair(upstream: str, repo: str) -> str:
    return f"{upstream}\0{repo}"


class Links:
    """The links of this node's cache, and the rule that serves by them."""

    def __init__(
        self,
        index: Index,
        offline: bool = False,
        clock: Callable[[], float] = time.monotonic,
        ttl: float = LINK_TTL,
        wall: Callable[[], float] = time.time,
        tolerates: Callable[[str, str], frozenset[str]] | None = None,
    ) -> None:
        self._index = index
        #: The refusals (404, 401, 403) an (upstream, repository)'s freshness rules
        #: serve a cached tag stale on: a link made before keeps serving on them too.
        self._tolerates = tolerates or (lambda upstream, repo: frozenset())
        self._offline = offline
        self._clock = clock
        self._ttl = ttl
        self._wall = wall
        self._refused: OrderedDict[tuple[str, str], tuple[float, RegistryError]] = OrderedDict()
        # One confirmation at a time per pair and digest: a rollout asks once.
        self._confirmations: SingleFlight[tuple[str, str], None] = SingleFlight()
        self._hints: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._expanded: OrderedDict[tuple[str, str], None] = OrderedDict()
        #: Upstream HEADs sent to confirm a pair (the tests read it). Never exported:
        #: alone, it moves for a held digest only (an unheld one is asked by its GET).
        self.confirmations = 0

    async def close(self) -> None:
        await self._confirmations.close()

    async def _linked_at(self, upstream: str, repo: str, digest: str) -> float | None:
        return (await self._index.links(digest)).get(pair(upstream, repo))

    def _fresh(self, linked_at: float) -> bool:
        # Offline, the upstream cannot be asked again: a link serves however old.
        return self._offline or self._wall() - linked_at < self._ttl

    async def known(self, upstream: str, repo: str, digest: str) -> bool:
        """Whether the pair is linked, and recently enough to serve without asking."""
        linked_at = await self._linked_at(upstream, repo, digest)
        return linked_at is not None and self._fresh(linked_at)

    async def add(self, upstream: str, repo: str, digests: Iterable[str]) -> None:
        """Link ``digests`` under the pair now: the upstream answered for them there."""
        wanted, now = pair(upstream, repo), self._wall()
        new: dict[str, dict[str, float]] = {}
        for digest in digests:
            linked_at = (await self._index.links(digest)).get(wanted)
            # Refreshed once a tenth of the window has gone: not a write per request.
            if linked_at is None or now - linked_at > self._ttl / 10:
                new[digest] = {wanted: now}
        if new:
            await self._index.add_links(new)

    def hint(self, upstream: str, repo: str, digest: str, body: bytes) -> None:
        """Remember what a manifest served under the pair says the registry checked
        there (``oci.references``): a hint, never a link. It only spares a client's
        fetch in a cluster the confirmation asked before a peer is (see
        ``blobs/chains.py``): the node that serves still applies the whole rule."""
        linked = pair(upstream, repo)
        key = (linked, digest)
        if key in self._expanded:
            self._expanded.move_to_end(key)
            return
        self._expanded[key] = None
        if len(self._expanded) > EXPANDED_MAX:
            self._expanded.popitem(last=False)
        for child in references(body)[:MAX_REFERENCES] if len(body) <= MANIFEST_LIMIT else []:
            self._hints[(linked, child)] = None
            self._hints.move_to_end((linked, child))
        while len(self._hints) > HINTS_MAX:
            self._hints.popitem(last=False)

    def hinted(self, upstream: str, repo: str, digest: str) -> bool:
        """Whether a manifest served under the pair named ``digest`` (see :meth:`hint`)."""
        return (pair(upstream, repo), digest) in self._hints

    async def vouch(self, up: Upstream, repo: str, digest: Digest, kind: Kind, held: bool) -> bool:
        """Allow serving ``digest`` under (``up``, ``repo``), or raise the error the
        upstream itself gives there (BLOB_UNKNOWN / MANIFEST_UNKNOWN, UNAUTHORIZED,
        DENIED), whether this node holds the digest or not: the answer tells nothing
        of what is cached.

        ``held``: this node (or the bucket it would read) holds the digest or is
        bringing it in. Returns True when the pair is linked (or just confirmed);
        False when it is not and the digest is not held: the fetch that follows asks
        the upstream under this repository, and its answer is the rule (a caller
        that finds the digest held after all, after an await, must confirm then:
        see ``blobs/vouched.py``).
        """
        linked_at = await self._linked_at(up.name, repo, str(digest))
        if linked_at is not None and self._fresh(linked_at):
            return True
        unknown = BlobUnknown if kind == "blob" else ManifestUnknown
        if self._offline:
            raise unknown("not in the cache for this repository, and the proxy is offline")
        refused = self._refused_now(up.name, repo, str(digest))
        if refused is not None:
            # "Unknown" in the words of what is asked for now (blob or manifest).
            raise unknown() if isinstance(refused, BlobUnknown | ManifestUnknown) else refused
        if not held:
            return False
        kept_on: frozenset[str] = frozenset()
        if linked_at is not None and linked_at != DERIVED:
            kept_on = self._tolerates(up.name, repo)
        try:
            await self._confirmations.run(
                (pair(up.name, repo), str(digest)),
                lambda: self.confirm(up, repo, digest, kind, kept_on),
            )
        except (UpstreamUnavailable, TooManyRequests):
            if linked_at is None or linked_at == DERIVED:
                # Never the upstream's word (never linked, or only derived from an
                # older cache's tags): no old link to fall back on.
                raise
            # The upstream vouched here before and cannot answer now: still served
            # (log lines are rate-limited by cacheproxy.logs).
            log.warning(
                "serving %s under %s/%s by an old link: the upstream cannot confirm it now",
                digest,
                up.name,
                repo,
            )
        return True

    def refuse(self, upstream: str, repo: str, digest: str, error: RegistryError) -> None:
        """Remember the upstream's refusal of ``digest`` under the pair for a while (the
        same memory whether the answer came from a confirmation or a fetch)."""
        if not isinstance(error, REFUSALS):
            return
        key = (pair(upstream, repo), digest)
        self._refused[key] = (self._clock(), error)
        self._refused.move_to_end(key)
        if len(self._refused) > NEGATIVE_MAX:
            self._refused.popitem(last=False)

    def _refused_now(self, upstream: str, repo: str, digest: str) -> RegistryError | None:
        key = (pair(upstream, repo), digest)
        found = self._refused.get(key)
        if found is None:
            return None
        if self._clock() - found[0] >= NEGATIVE_TTL:
            del self._refused[key]
            return None
        error = found[1]
        return type(error)(error.message, headers=error.headers)

    async def confirm(
        self,
        up: Upstream,
        repo: str,
        digest: Digest,
        kind: Kind,
        kept_on: frozenset[str] = frozenset(),
    ) -> None:
        """Ask the upstream (HEAD, the proxy's credentials) whether ``repo`` has ``digest``:
        a yes is remembered as a link, a no raised (remembered for a while, and any old
        link dropped) as the error the upstream's answer maps to. ``kept_on``: refusals
        ("404", "401", "403") that keep an old link instead (the operator's freshness
        rules serve the repository's tags stale on them: its content goes with them)."""
        self.confirmations += 1
        path = f"/v2/{repo}/{'blobs' if kind == 'blob' else 'manifests'}/{digest}"
        headers = {"Accept": ", ".join(MANIFEST_TYPES)} if kind == "manifest" else {}
        unknown = BlobUnknown if kind == "blob" else ManifestUnknown
        try:
            resp = await up.request("HEAD", path, scope=pull_scope(repo), headers=headers)
        except (Unauthorized, Denied) as exc:
            # The proxy's own credentials do not reach this repository.
            if await self._kept(up.name, repo, str(digest), exc, kept_on):
                return
            await self._refused_by_upstream(up.name, repo, str(digest), exc)
            raise
        except RegistryError as exc:
            # An upstream that cannot answer cannot vouch; the client may retry.
            raise UpstreamUnavailable("the upstream cannot confirm this repository") from exc
        status = resp.status
        if status == 200:
            resp.release()
            await self.add(up.name, repo, [str(digest)])
            return
        error = error_for_status(resp, unknown)
        resp.release()
        log.debug("%s %s: not under %s/%s (upstream: %d)", kind, digest, up.name, repo, status)
        if await self._kept(up.name, repo, str(digest), error, kept_on):
            return
        await self._refused_by_upstream(up.name, repo, str(digest), error)
        raise error

    async def _kept(
        self, upstream: str, repo: str, digest: str, error: RegistryError, kept_on: frozenset[str]
    ) -> bool:
        """Whether an old link outlives the upstream's refusal ``error`` (the freshness
        rules say so): dated now, so it is not asked again at every request."""
        reason = _REFUSAL_REASONS.get(type(error))
        if reason is None or reason not in kept_on:
            return False
        log.warning(
            "serving %s under %s/%s by an old link although the upstream refused it (%s):"
            " the repository's freshness rules serve stale on %s",
            digest, upstream, repo, error.message, reason,
        )  # fmt: skip
        await self.add(upstream, repo, [digest])
        return True

    async def _refused_by_upstream(
        self, upstream: str, repo: str, digest: str, error: RegistryError
    ) -> None:
        self.refuse(upstream, repo, digest, error)
        if not isinstance(error, REFUSALS):
            return  # a 429 or a 5xx says nothing of the repository
        if await self._linked_at(upstream, repo, digest) is not None:
            await self._index.drop_link(digest, pair(upstream, repo))


# A refusal in the freshness rules' words (manifests/freshness.py: stale_on).
_REFUSAL_REASONS: dict[type[RegistryError], str] = {
    BlobUnknown: "404",
    ManifestUnknown: "404",
    Unauthorized: "401",
    Denied: "403",
}
# The time a link derived from an older cache's tags is dated: long ago, so that
# online it is confirmed at its first use, and never served on an upstream's failure.
DERIVED = 0.0
# Set once the links of a cache have been (re)derived in the current format: v1 linked
# whatever a manifest named (a subject too), so its records are not kept.
LINKS_MARKER = "links-derived\0v2"


def derive_links(store: BlobStore, index: Index) -> int:
    """Start the links of a cache written by an older version over (blocking; once).

    Older records may have come from what a manifest named, which vouches for
    nothing, so all of them go. Each cached tag's own image is linked again under its
    pair from what is on disk (the tag was the upstream's answer there; its config,
    layers and children were checked by the registry), marked DERIVED: online each is
    confirmed at its first use (and not served while the upstream cannot answer);
    offline (an air gap, where nothing can be confirmed) it serves as before. That is
    the one place a registry's own check stands for a link: a registry that did not
    check what an index names could have let such a tag reach another repository's
    content; warm such a cache online, or import its images again, to have every
    link confirmed. Returns the digests linked.
    """
    if index.get_sync(LINKS_MARKER):
        return 0
    index.forget_all_links()
    snapshot = index.snapshot()
    pairs: dict[str, dict[str, float]] = {}
    for tag in snapshot.tags:
        reach_sync(store, tag.upstream, tag.name, tag.entry.digest, pairs, DERIVED)
    if pairs:
        index.add_links_sync(pairs)
    index.set_sync(LINKS_MARKER, 1)
    return len(pairs)


def reach_sync(
    store: BlobStore,
    upstream: str,
    repo: str,
    root: str,
    pairs: dict[str, dict[str, float]],
    when: float,
    carried: set[str] | None = None,
) -> None:
    """Add to ``pairs`` the pair for ``root`` and what it references on disk, as a
    registry checks it (``oci.references``: never a subject), linked at ``when``
    (blocking). ``carried``: only these digests (what a bundle itself brought)."""
    linked = pair(upstream, repo)
    stack, seen = [root], set[str]()
    while stack and len(seen) < MAX_REFERENCES:
        digest = stack.pop()
        if digest in seen or (carried is not None and digest not in carried):
            continue
        seen.add(digest)
        pairs.setdefault(digest, {})[linked] = when
        try:
            body = store.read(parse_digest(digest))
        except DigestInvalid:
            continue
        # Only manifests (JSON objects) reference anything; a layer is not parsed.
        if body is not None and len(body) <= MANIFEST_LIMIT and body[:1] == b"{":
            stack.extend(references(body))
