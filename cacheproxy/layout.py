"""The cache directory's layout: the one place that names its parts.

```
<cache_dir>/blobs/<alg>/<ab>/<hex>   complete, verified blobs and manifests (immutable)
<cache_dir>/tmp/                     fills in progress (removed at start)
<cache_dir>/index/                   diskcache: tags, manifest types, access records
<cache_dir>/ledger.db                the savings ledger (SQLite, WAL)
<cache_dir>/lock                     held (flock) by the process that may change the cache
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .oci import Digest


@dataclass(frozen=True, slots=True)
class CacheLayout:
    """Paths under one cache directory."""

    root: Path

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def index(self) -> Path:
        return self.root / "index"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.db"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    def blob(self, digest: Digest) -> Path:
        """Where a complete blob lives. The digest was validated against the spec
        grammar (lowercase hex only), so it can never name anything outside blobs/."""
        return self.blobs / digest.algorithm / digest.hex[:2] / digest.hex
