"""What the policy keeps in the index, so that it holds offline and across restarts:

- ``verdict\\0<digest>``: the keys (by id) that signed a manifest, each with what the
  verdict rests on (the digest of the signature's manifest, or ``via <index>``: the
  platform manifest of an index that key signed). A key that changes has another id,
  so a verdict on the old key is simply not found: the manifest is checked again.
- ``policymark\\0<blob>``: under each enforced (policy, upstream, repository), the
  manifests naming the blob that were allowed and that were refused. A blob is
  refused there when a refused manifest names it and no allowed one does: a layer
  shared with an allowed image stays servable.

Both are per digest, so ``Index.forget_content`` drops them with the content.
Records are bounded in size; reads go through a bounded memory of the hot ones.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from ..store.index import Index

VERDICT = "verdict\0"
MARK = "policymark\0"
# Records remembered in memory (write-through), of each kind.
MEMORY = 50_000
# Keys a verdict names at most (more than all policies' keys is junk).
MAX_KEYS = 256
# Scopes a blob is marked in, and manifests kept per scope and side. Beyond, the
# oldest go (an allowed side that is full still allows: it is never empty).
MAX_SCOPES = 256
MAX_MANIFESTS = 256


class Verdicts:
    """Which keys signed which manifests."""

    def __init__(self, index: Index) -> None:
        self._index = index
        self._memory: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._writing = asyncio.Lock()

    async def get(self, digest: str) -> Mapping[str, str]:
        """key id -> what the verdict rests on, for ``digest`` (read-only)."""
        known = self._memory.get(digest)
        if known is not None:
            self._memory.move_to_end(digest)
            return known
        raw = await self._index.get_record(VERDICT + digest)
        known = _strings(raw)
        _remember(self._memory, digest, known)
        return known

    async def add(self, digest: str, signed: Mapping[str, str]) -> None:
        """Record that these keys signed ``digest`` (resting on these signatures)."""
        async with self._writing:
            known = dict(await self.get(digest))
            if all(known.get(k) == v for k, v in signed.items()):
                return
            known.update(signed)
            known = dict(list(known.items())[-MAX_KEYS:])
            _remember(self._memory, digest, known)
            await self._index.set_record(VERDICT + digest, known)


class BlobMarks:
    """Which allowed and refused manifests name a blob, per enforced scope."""

    def __init__(self, index: Index) -> None:
        self._index = index
        self._memory: OrderedDict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = (
            OrderedDict()
        )
        self._writing = asyncio.Lock()

    async def _get(self, blob: str) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
        known = self._memory.get(blob)
        if known is not None:
            self._memory.move_to_end(blob)
            return known
        known = _marks(await self._index.get_record(MARK + blob))
        _remember(self._memory, blob, known)
        return known

    async def refused(self, blob: str, scopes: Iterable[str]) -> str | None:
        """The first of ``scopes`` where only refused manifests name ``blob``."""
        known = await self._get(blob)
        for scope in scopes:
            allowed, refused = known.get(scope, ((), ()))
            if refused and not allowed:
                return scope
        return None

    async def mark(self, scope: str, manifest: str, blobs: Iterable[str], allowed: bool) -> None:
        """Say that ``manifest``, which names ``blobs``, was allowed (or refused) in
        ``scope``; written only where that changes the record."""
        async with self._writing:
            for blob in dict.fromkeys(blobs):
                known = await self._get(blob)
                sides = known.get(scope, ((), ()))
                keep, drop = (sides[0], sides[1]) if allowed else (sides[1], sides[0])
                if manifest in keep and manifest not in drop:
                    continue
                keep = (*(m for m in keep if m != manifest), manifest)[-MAX_MANIFESTS:]
                drop = tuple(m for m in drop if m != manifest)
                new = dict(known)
                new.pop(scope, None)
                new[scope] = (keep, drop) if allowed else (drop, keep)
                new = dict(list(new.items())[-MAX_SCOPES:])
                _remember(self._memory, blob, new)
                await self._index.set_record(MARK + blob, new)


def _remember(memory: OrderedDict[str, Any], key: str, value: Any) -> None:
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > MEMORY:
        memory.popitem(last=False)


def _strings(raw: object) -> dict[str, str]:
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)}


def _marks(raw: object) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    if not isinstance(raw, dict):
        return {}
    out: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for scope, sides in raw.items():
        if isinstance(scope, str) and isinstance(sides, tuple) and len(sides) == 2:
            allowed, refused = sides
            if isinstance(allowed, tuple) and isinstance(refused, tuple):
                out[scope] = (allowed, refused)
    return out
