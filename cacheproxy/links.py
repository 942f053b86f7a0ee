"""Who may be served what: a digest under an (upstream, repository) pair.

Bytes are stored once per digest, but a digest is served under a repository only
when that upstream has vouched for it there (distribution does the same with its
per-repository links). A digest is not a secret: it appears in pod status, CI logs,
SBOMs and this proxy's own log lines. A pair is linked when the digest was

- fetched from the upstream under that repository (a fill, a manifest GET),
- named by a tag resolved there, or referenced by a manifest linked there,
- or confirmed by the upstream with a HEAD under that repository, asked with the
  proxy's own credentials (a HEAD is not a pull for Docker Hub).

A request for an unlinked pair whose digest this node does not hold needs no
confirmation: the fetch that follows asks the upstream under that repository, and
its answer is the rule. Where that fetch would ask someone else first (a peer in
a cluster, the shared bucket) the pair is confirmed first, held or not. Either way a
refused pair costs one upstream request and moves the same counters whatever the
cache holds: /metrics is no oracle either. Offline, only links count.
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
# Manifests whose references were linked in this process: parsing them once is enough.
EXPANDED_MAX = 50_000
# References of one manifest linked at most (an index of a few hundred platforms is
# large; tens of thousands is an attack on the index's size).
MAX_REFERENCES = 4096
# A body past this is not a manifest worth parsing for references.
MANIFEST_LIMIT = 4 * 1024 * 1024


def pair(upstream: str, repo: str) -> str:
    return f"{upstream}\0{repo}"


class Links:
    """The links of this node's cache, and the rule that serves by them."""

    def __init__(
        self, index: Index, offline: bool = False, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._index = index
        self._offline = offline
        self._clock = clock
        self._refused: OrderedDict[tuple[str, str], tuple[float, RegistryError]] = OrderedDict()
        # One confirmation at a time per pair and digest: a rollout asks once.
        self._confirmations: SingleFlight[tuple[str, str], None] = SingleFlight()
        self._expanded: OrderedDict[tuple[str, str], None] = OrderedDict()
        #: Upstream HEADs sent to confirm a pair (the tests read it). Never exported:
        #: alone, it moves for a held digest only (an unheld one is asked by its GET).
        self.confirmations = 0

    async def close(self) -> None:
        await self._confirmations.close()

    async def known(self, upstream: str, repo: str, digest: str) -> bool:
        return pair(upstream, repo) in await self._index.links(digest)

    async def add(self, upstream: str, repo: str, digests: Iterable[str]) -> None:
        """Link ``digests`` under the pair (idempotent; cheap when already linked)."""
        wanted = pair(upstream, repo)
        new: dict[str, set[str]] = {}
        for digest in digests:
            if wanted not in await self._index.links(digest):
                new[digest] = {wanted}
        if new:
            await self._index.add_links(new)

    async def add_manifest(self, upstream: str, repo: str, digest: str, body: bytes) -> None:
        """Link a manifest and everything it references (config, layers, children)."""
        key = (pair(upstream, repo), digest)
        if key in self._expanded:
            self._expanded.move_to_end(key)
            return
        await self.add(upstream, repo, [digest, *references(body)[:MAX_REFERENCES]])
        self._expanded[key] = None
        if len(self._expanded) > EXPANDED_MAX:
            self._expanded.popitem(last=False)

    async def vouch(self, up: Upstream, repo: str, digest: Digest, kind: Kind, held: bool) -> bool:
        """Allow serving ``digest`` under (``up``, ``repo``), or raise the error the
        upstream itself gives there (BLOB_UNKNOWN / MANIFEST_UNKNOWN, UNAUTHORIZED,
        DENIED), whether this node holds the digest or not: the answer tells nothing
        of what is cached.

        ``held``: this node holds the digest or is bringing it in. Returns True when
        the pair is linked (or just confirmed); False when it is not and the digest is
        not held: the fetch that follows asks the upstream under this repository,
        and its answer is the rule (a caller that finds the digest held after all,
        after an await, must confirm then: see ``blobs/vouched.py``).
        """
        if await self.known(up.name, repo, str(digest)):
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
        await self._confirmations.run(
            (pair(up.name, repo), str(digest)), lambda: self.confirm(up, repo, digest, kind)
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

    async def confirm(self, up: Upstream, repo: str, digest: Digest, kind: Kind) -> None:
        """Ask the upstream (HEAD, the proxy's credentials) whether ``repo`` has ``digest``:
        a yes is remembered as a link, a no raised (and remembered for a while) as the
        error the upstream's answer maps to."""
        self.confirmations += 1
        path = f"/v2/{repo}/{'blobs' if kind == 'blob' else 'manifests'}/{digest}"
        headers = {"Accept": ", ".join(MANIFEST_TYPES)} if kind == "manifest" else {}
        unknown = BlobUnknown if kind == "blob" else ManifestUnknown
        try:
            resp = await up.request("HEAD", path, scope=pull_scope(repo), headers=headers)
        except (Unauthorized, Denied) as exc:
            # The proxy's own credentials do not reach this repository.
            self.refuse(up.name, repo, str(digest), exc)
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
        self.refuse(up.name, repo, str(digest), error)
        raise error


# Set once the links of a cache written before links existed have been derived.
LINKS_MARKER = "links-derived\0v1"


def link_tagged_content(store: BlobStore, index: Index) -> int:
    """Link what each cached tag reaches under its own pair (blocking; once per cache).

    A cache written before links existed holds tags resolved under their upstream
    and repository: what they reach was fetched there. Returns the digests linked.
    """
    if index.get_sync(LINKS_MARKER):
        return 0
    snapshot = index.snapshot()
    pairs: dict[str, set[str]] = {}
    for tag in snapshot.tags:
        reach_sync(store, tag.upstream, tag.name, tag.entry.digest, pairs)
    if pairs:
        index.add_links_sync(pairs)
    index.set_sync(LINKS_MARKER, 1)
    return len(pairs)


def reach_sync(
    store: BlobStore, upstream: str, repo: str, root: str, pairs: dict[str, set[str]]
) -> None:
    """Add to ``pairs`` the pair for ``root`` and all it references on disk (blocking)."""
    linked = pair(upstream, repo)
    stack, seen = [root], set()
    while stack:
        digest = stack.pop()
        if digest in seen:
            continue
        seen.add(digest)
        pairs.setdefault(digest, set()).add(linked)
        try:
            body = store.read(parse_digest(digest))
        except DigestInvalid:
            continue
        # Only manifests (JSON objects) reference anything; a layer is not parsed.
        if body is not None and len(body) <= MANIFEST_LIMIT and body[:1] == b"{":
            stack.extend(references(body))
