"""The signature policy's decisions: whether a manifest may be served under a
repository, and a blob under it.

A manifest under a repository that a [[policy]] matches is served when one of the
policy's keys signed it (``cosign.py``), checked before the answer goes out, on the
first pull too; a signed index vouches for the platform manifests it lists. What a
key signed is a verdict per (key, digest), kept in the index with the signature it
rests on (``records.py``): it holds offline, after a restart, and for every
repository and policy that trusts that key. A manifest no key signed is looked up
again once ``recheck`` seconds have passed (a signature pushed after the first pull
is found), its lookups shared by the requests that wait for it.

enforce refuses it (403 DENIED) and remembers, per (policy, upstream, repository),
the blobs it names: those are refused there too, unless an allowed manifest names
them as well. warn serves it, logs (rate-limited, cacheproxy/logs.py) and counts;
audit only counts.

Only a client's requests are checked. In a cluster the node a client asked checks
(its peers answer it unpoliced, as they answer every node's fetch): that node is
the one that serves the client, its verdicts are its own index's, and an owner
never refuses another node what that node would then refuse or serve by its own
policy. The signatures themselves are fetched through the cluster like any
manifest, so the upstream sees them asked once.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..config.policy import PolicyRule
from ..errors import Denied, RegistryError
from ..manifests.service import ManifestService
from ..oci import INDEX_TYPES, MANIFEST_TYPES, Digest, parse_digest, references
from ..singleflight import SingleFlight
from ..store.index import Index
from ..upstream.client import Upstream
from .cosign import PublicKey, check_bundle, check_simple_signing
from .keys import Keyring
from .material import is_material
from .records import BlobMarks, Verdicts
from .signatures import Candidate, SignatureFinder

log = logging.getLogger(__name__)
K = TypeVar("K")
V = TypeVar("V")

OUTCOMES = ("verified", "refused", "warned", "audited", "deferred", "material")
MISSING = "no cosign signature by a configured key"
# Seconds before the marks of a (scope, manifest) already written are written again
# (after an eviction dropped them, say).
MARK_EVERY = 60.0
# Memories of this process, each bounded: repositories matched, manifests found
# unsigned, marks written.
MEMORY = 10_000
# Platform manifests of one signed index vouched for at most.
MAX_CHILDREN = 4096


@dataclass(frozen=True)
class Rule:
    """A [[policy]] table and its keys."""

    label: str
    config: PolicyRule
    keyring: Keyring

    def holds_for(self, target: str) -> bool:
        return any(fnmatch.fnmatchcase(target, g) for g in self.config.repositories)


class Policies:
    """Every [[policy]], and what they decided."""

    def __init__(
        self,
        rules: tuple[PolicyRule, ...],
        index: Index,
        finder: SignatureFinder,
        manifests: ManifestService,
        recheck: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rules = tuple(
            Rule(r.label(i), r, Keyring(tuple(Path(k) for k in r.keys), clock))
            for i, r in enumerate(rules)
        )
        self._verdicts = Verdicts(index)
        self._marks = BlobMarks(index)
        self._finder = finder
        self._manifests = manifests
        self._recheck = max(recheck, 1.0)
        self._clock = clock
        # (upstream, repository, digest) -> key id -> what it rests on: one lookup at a time.
        self._searches: SingleFlight[tuple[str, str, str], dict[str, str]] = SingleFlight()
        self._matches: OrderedDict[str, tuple[Rule, ...]] = OrderedDict()
        self._unsigned: OrderedDict[tuple[str, str, frozenset[str]], float] = OrderedDict()
        self._marked: OrderedDict[tuple[str, str], tuple[bool, float]] = OrderedDict()
        # Digest -> whether it is verification material (material.py): immutable.
        self._material: OrderedDict[str, bool] = OrderedDict()
        self._refreshing = False
        #: policy label -> outcome -> manifest requests (/metrics).
        self.stats: dict[str, Counter[str]] = {r.label: Counter() for r in self._rules}

    async def close(self) -> None:
        await self._searches.close()

    async def check_manifest(
        self, up: Upstream, repo: str, digest: str, media_type: str, body: bytes | None
    ) -> None:
        """Raise DENIED unless every enforced policy for (``up``, ``repo``) lets this
        manifest be served; count and log what each policy decided."""
        rules = self._matching(up.name, repo)
        if not rules:
            return
        await self._fresh_keys()
        known = await self._verdicts.get(digest)
        unmet = any(not set(r.keyring.keys) & known.keys() for r in rules)
        if unmet and await self._is_material(up, repo, digest, media_type, body):
            for rule in rules:
                self.stats[rule.label]["material"] += 1
            return
        signed = await self._signed(up, repo, digest, body, rules, known)
        denial: Denied | None = None
        for rule in rules:
            ids = set(rule.keyring.keys)
            ok = bool(ids & signed.keys())
            outcome = self._outcome(rule, ok, media_type)
            self.stats[rule.label][outcome] += 1
            if ok and media_type in INDEX_TYPES:
                await self._vouch_children(up, repo, digest, body, signed, ids)
            if rule.config.mode == "enforce" and outcome in ("verified", "refused"):
                await self._mark(rule, up, repo, digest, media_type, body, ok)
            if outcome == "warned":
                log.warning(
                    "policy %s: serving %s/%s@%s: %s (warn)", rule.label, up.name, repo, digest,
                    MISSING,
                )  # fmt: skip
            elif outcome == "refused" and denial is None:
                target = f"{up.name}/{repo}"[:300]
                denial = Denied(f"{target}@{digest}: {MISSING} (policy {rule.label})")
        if denial is not None:
            raise denial

    async def check_blob(self, up: Upstream, repo: str, digest: Digest) -> None:
        """Raise DENIED when, under an enforced policy for (``up``, ``repo``), only
        refused manifests name this blob."""
        rules = [r for r in self._matching(up.name, repo) if r.config.mode == "enforce"]
        if not rules:
            return
        scopes = {self._scope(r, up.name, repo): r for r in rules}
        refused = await self._marks.refused(str(digest), scopes)
        if refused is not None:
            rule = scopes[refused]
            raise Denied(
                f"{up.name}/{repo}"[:300] + f": blob {digest} belongs only to images refused by"
                f" policy {rule.label} ({MISSING})"
            )

    @staticmethod
    def _outcome(rule: Rule, ok: bool, media_type: str) -> str:
        if ok:
            return "verified"
        if media_type in INDEX_TYPES and rule.config.per_platform:
            return "deferred"  # each platform manifest asked next is checked
        return {"enforce": "refused", "warn": "warned"}.get(rule.config.mode, "audited")

    def _matching(self, upstream: str, repo: str) -> tuple[Rule, ...]:
        target = f"{upstream}/{repo}"
        found = self._matches.get(target)
        if found is None:
            found = tuple(r for r in self._rules if r.holds_for(target))
            _remember(self._matches, target, found)
        return found

    @staticmethod
    def _scope(rule: Rule, upstream: str, repo: str) -> str:
        return f"{rule.label}\0{upstream}\0{repo}"

    async def _fresh_keys(self) -> None:
        """Read the key files again when due (in a thread, one reader at a time; the
        others go on with the keys as they are)."""
        if self._refreshing or not any(r.keyring.due() for r in self._rules):
            return
        self._refreshing = True
        try:
            changed = await asyncio.to_thread(lambda: [r.keyring.refresh() for r in self._rules])
        finally:
            self._refreshing = False
        if any(changed):
            log.info("policy keys changed: manifests are checked again")
            self._unsigned.clear()
            self._marked.clear()

    async def _is_material(
        self, up: Upstream, repo: str, digest: str, media_type: str, body: bytes | None
    ) -> bool:
        found = self._material.get(digest)
        if found is None:
            body = body if body is not None else await self._body(up, repo, digest)
            found = is_material(media_type, body)
            _remember(self._material, digest, found)
        return found

    async def _signed(
        self, up: Upstream, repo: str, digest: str, body: bytes | None,
        rules: tuple[Rule, ...], known: Mapping[str, str],
    ) -> Mapping[str, str]:  # fmt: skip
        """The keys known to have signed ``digest`` (key id -> what it rests on),
        looked up when a policy asked for is not satisfied yet."""
        wanted = frozenset().union(*(r.keyring.keys for r in rules))
        unmet = [r for r in rules if not set(r.keyring.keys) & known.keys()]
        if not unmet:
            return known
        memo = (f"{up.name}\0{repo}", digest, wanted)
        looked = self._unsigned.get(memo)
        if looked is not None and self._clock() - looked < self._recheck:
            return known
        try:
            found = await self._searches.run(
                (up.name, repo, digest), lambda: self._search(up, repo, digest, body)
            )
        except RegistryError as exc:
            if any(r.config.mode == "enforce" for r in unmet):
                raise
            log.warning("policy: cannot look up the signatures of %s: %s", digest, exc.message)
            return known
        if found:
            await self._verdicts.add(digest, found)
            known = {**known, **found}
        if any(not set(r.keyring.keys) & known.keys() for r in unmet):
            _remember(self._unsigned, memo, self._clock())
        return known

    async def _search(
        self, up: Upstream, repo: str, digest: str, body: bytes | None
    ) -> dict[str, str]:
        """The configured keys that signed ``digest``, by the signatures found."""
        candidates = await self._finder.find(up, repo, parse_digest(digest))
        if not candidates:
            return {}
        if body is None and any(c.kind == "bundle" for c in candidates):
            body = await self._body(up, repo, digest)
        keys: dict[str, PublicKey] = {}
        for rule in self._rules:
            keys.update(rule.keyring.keys)
        # Off the loop: up to MAX_SIGNATURES times the keys in public-key operations.
        return await asyncio.to_thread(verify_all, candidates, digest, body, keys)

    async def _body(self, up: Upstream, repo: str, digest: str) -> bytes:
        answer = await self._manifests.manifest(up, repo, digest, list(MANIFEST_TYPES), True)
        return answer.body or b""

    def _due(self, key: tuple[str, str], value: bool) -> bool:
        """Whether the marks (or vouchers) of ``key`` are to be written now."""
        seen = self._marked.get(key)
        now = self._clock()
        if seen is not None and seen[0] == value and now - seen[1] < MARK_EVERY:
            return False
        _remember(self._marked, key, (value, now))
        return True

    async def _mark(
        self, rule: Rule, up: Upstream, repo: str, digest: str, media_type: str,
        body: bytes | None, allowed: bool,
    ) -> None:  # fmt: skip
        """Mark the blobs an image manifest names as allowed or refused in the rule's
        scope. An index names manifests, each checked when it is asked."""
        scope = self._scope(rule, up.name, repo)
        if media_type in INDEX_TYPES or not self._due((scope, digest), allowed):
            return
        body = body if body is not None else await self._body(up, repo, digest)
        await self._marks.mark(scope, digest, references(body)[:MAX_CHILDREN], allowed)

    async def _vouch_children(
        self, up: Upstream, repo: str, digest: str, body: bytes | None,
        signed: Mapping[str, str], ids: set[str],
    ) -> None:  # fmt: skip
        """A signed index vouches for the platform manifests it lists, by its keys."""
        if not self._due(("index", digest), True):
            return
        body = body if body is not None else await self._body(up, repo, digest)
        via = {kid: f"via {digest}" for kid in signed if kid in ids}
        for child in references(body)[:MAX_CHILDREN]:
            await self._verdicts.add(child, via)


def verify_all(
    candidates: list[Candidate], digest: str, manifest: bytes | None, keys: dict[str, PublicKey]
) -> dict[str, str]:
    """key id -> the signature's manifest digest, for each key a candidate verifies
    with (blocking: public-key operations)."""
    found: dict[str, str] = {}
    for c in candidates:
        if c.kind == "simple":
            kid = check_simple_signing(c.body, c.signature, digest, keys)
        else:
            kid = check_bundle(c.body, digest, manifest, keys)
        if kid is not None:
            found.setdefault(kid, c.where)
    return found


def _remember(memory: OrderedDict[K, V], key: K, value: V) -> None:
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > MEMORY:
        memory.popitem(last=False)
