"""What the shared tier's object store charges: per request, per byte moved, per
GB-month stored. The numbers are data in ``prices.toml`` (``[stores.<id>]``), each
with its source and the day it was read; this module checks their shape.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from ..config import NETWORK_PATHS


class StoreError(ValueError):
    """A [stores] entry that cannot be used."""


@dataclass(frozen=True, slots=True)
class Store:
    """One object store's prices."""

    id: str
    title: str
    # Dollars per 1,000 requests: GET and HEAD; PUT, COPY, POST and LIST.
    get_per_1000: Decimal
    put_per_1000: Decimal
    # The charge (in [charges]) for a GB-month stored, if the store bills storage.
    storage: str | None
    # Which transfer charges each network path from the proxy to the store pays.
    paths: Mapping[str, tuple[str, ...]]
    source: str
    read: str
    note: str

    def requests_usd(self, gets: int, puts: int) -> Decimal:
        return (gets * self.get_per_1000 + puts * self.put_per_1000) / 1000


def _text(where: str, raw: Mapping[str, Any], key: str, required: bool = True) -> str:
    value = raw.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise StoreError(f"{where}: {key} must be a non-empty string")
    return value


def _price(where: str, raw: Mapping[str, Any], key: str) -> Decimal:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int | Decimal) or value < 0:
        raise StoreError(f"{where}: {key} must be a number of dollars, not {value!r}")
    return Decimal(value)


def parse_stores(origin: str, doc: Mapping[str, Any], charges: Collection[str]) -> dict[str, Store]:
    """The [stores] tables of a pricing file (``charges``: the ids it defines)."""
    tables = doc.get("stores", {})
    if not isinstance(tables, dict):
        raise StoreError(f"{origin}: stores must be a table")
    out = {}
    for sid, raw in tables.items():
        where = f"{origin}: stores.{sid}"
        if not isinstance(raw, dict):
            raise StoreError(f"{where}: expected a table")
        paths_raw = raw.get("paths")
        if not isinstance(paths_raw, dict) or set(paths_raw) != set(NETWORK_PATHS):
            raise StoreError(f"{where}: paths must name exactly {', '.join(NETWORK_PATHS)}")
        paths = {}
        for path, ids in paths_raw.items():
            if not isinstance(ids, list) or any(i not in charges for i in ids):
                raise StoreError(f"{where}: paths.{path} must list known charges, got {ids!r}")
            paths[path] = tuple(ids)
        storage = raw.get("storage")
        if storage is not None and storage not in charges:
            raise StoreError(f"{where}: storage names no known charge: {storage!r}")
        read = _text(where, raw, "read")
        try:
            date.fromisoformat(read)
        except ValueError:
            raise StoreError(f"{where}: read must be a date, YYYY-MM-DD") from None
        out[sid] = Store(
            id=sid,
            title=_text(where, raw, "title"),
            get_per_1000=_price(where, raw, "get_per_1000"),
            put_per_1000=_price(where, raw, "put_per_1000"),
            storage=storage,
            paths=paths,
            source=_text(where, raw, "source"),
            read=read,
            note=_text(where, raw, "note", required=False),
        )
    return out
