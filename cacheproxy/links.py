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
its answer is the rule. Offline, only links count.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Literal

from .errors import (
    BlobUnknown,
    Denied,
    DigestInvalid,
    ManifestUnknown,
    RegistryError,
    Unauthorized,
    UpstreamUnavailable,
)
from .oci import MANIFEST_TYPES, Digest, parse_digest, references
from .store.files import BlobStore
from .store.index import Index
from .upstream.client import Upstream, pull_scope

log = logging.getLogger(__name__)

Kind = Literal["blob", "manifest"]
# A refused pair is remembered this long (the upstream is asked again after it),
NEGATIVE_TTL = 30.0
# and this many refused pairs at most.
NEGATIVE_MAX = 10_000
# Manifests whose references were linked in this process: parsing them once is enough.
EXPANDED_MAX = 50_000
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
        self._refused: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._expanded: OrderedDict[tuple[str, str], None] = OrderedDict()
        #: Upstream HEADs sent to confirm a pair (the tests and /metrics read it).
        self.confirmations = 0

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
        await self.add(upstream, repo, [digest, *references(body)])
        self._expanded[key] = None
        if len(self._expanded) > EXPANDED_MAX:
            self._expanded.popitem(last=False)

    async def vouch(self, up: Upstream, repo: str, digest: Digest, kind: Kind, held: bool) -> None:
        """Allow serving ``digest`` under (``up``, ``repo``), or raise BLOB_UNKNOWN /
        MANIFEST_UNKNOWN as the upstream itself would.

        ``held``: this node holds the digest or is bringing it in; otherwise the fetch
        that follows asks the upstream under this repository, which is the rule.
        """
        if await self.known(up.name, repo, str(digest)):
            return
        unknown = BlobUnknown if kind == "blob" else ManifestUnknown
        if self._offline:
            raise unknown("not in the cache for this repository, and the proxy is offline")
        if not held:
            return
        if await self.confirm(up, repo, digest, kind):
            return
        raise unknown()

    async def confirm(self, up: Upstream, repo: str, digest: Digest, kind: Kind) -> bool:
        """Ask the upstream (HEAD, the proxy's credentials) whether ``repo`` has ``digest``;
        remember a yes as a link and a no for a while."""
        key = (pair(up.name, repo), str(digest))
        refused_at = self._refused.get(key)
        if refused_at is not None and self._clock() - refused_at < NEGATIVE_TTL:
            return False
        self.confirmations += 1
        path = f"/v2/{repo}/{'blobs' if kind == 'blob' else 'manifests'}/{digest}"
        headers = {"Accept": ", ".join(MANIFEST_TYPES)} if kind == "manifest" else {}
        try:
            resp = await up.request("HEAD", path, scope=pull_scope(repo), headers=headers)
        except (Unauthorized, Denied):
            status = 401  # the proxy's own credentials do not reach this repository
        except RegistryError as exc:
            # An upstream that cannot answer cannot vouch; the client may retry.
            raise UpstreamUnavailable("the upstream cannot confirm this repository") from exc
        else:
            status = resp.status
            resp.release()
        if status == 200:
            await self.add(up.name, repo, [str(digest)])
            self._refused.pop(key, None)
            return True
        if status >= 500 or status == 429:
            raise UpstreamUnavailable(f"the upstream answered {status} to a confirmation")
        log.info("%s %s: not under %s/%s (upstream: %d)", kind, digest, up.name, repo, status)
        self._refused[key] = self._clock()
        self._refused.move_to_end(key)
        if len(self._refused) > NEGATIVE_MAX:
            self._refused.popitem(last=False)
        return False


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
