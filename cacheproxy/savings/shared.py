"""The shared tier in the savings report: which store's prices apply, and how the
report names them (a pricing file entry, its sources and the day they were read)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from ..config import Config, SharedConfig
from .db import Counts
from .prices import Pricing, StorePrice


def shared_price(
    config: Config, pricing: Pricing, daily: Mapping[tuple[str, str], Counts]
) -> StorePrice | None:
    """The shared tier's prices: as configured, or S3's defaults when the ledger counted
    a shared tier that is no longer configured; None when there is none at all."""
    if config.shared is not None:
        return pricing.store_price(config.shared)
    if any(
        c.served_shared or c.shared_get_requests or c.shared_put_requests for c in daily.values()
    ):
        return pricing.store_price(SharedConfig(bucket="(no longer configured)"))
    return None


def store_json(price: StorePrice, storage_usd_month: Decimal) -> dict[str, Any]:
    """The shared tier's store, its prices and sources, and its storage estimate."""
    store = price.store
    applied = [*price.transfer, *([price.storage] if price.storage else [])]
    return {
        "store": store.title,
        "network_path": price.network_path,
        "region": price.region,
        "usd_per_1000_get": float(store.get_per_1000),
        "usd_per_1000_put": float(store.put_per_1000),
        "source": store.source,
        "read": store.read,
        "charges": [
            {
                "id": a.charge.id,
                "title": a.charge.title,
                "region": a.region,
                "source": a.charge.source,
                "read": a.charge.read,
            }
            for a in applied
        ],
        "storage_usd_per_month": round(float(storage_usd_month), 4),
    }
