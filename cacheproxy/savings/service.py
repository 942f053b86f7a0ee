"""The savings side of a running proxy: its ledger, its prices, its reports."""

from __future__ import annotations

import asyncio
import datetime as dt

from ..config import Config
from . import report
from .ledger import Ledger
from .prices import Price, Pricing


class Savings:
    """What the dashboard and ``/metrics`` ask about savings, answered without blocking."""

    def __init__(self, config: Config, pricing: Pricing, ledger: Ledger) -> None:
        self.config = config
        self.pricing = pricing
        self.ledger = ledger
        self._prices: dict[str, Price] = {}

    def price_of(self, upstream: str) -> Price:
        """The price an upstream pays (resolved once: config and pricing are frozen)."""
        price = self._prices.get(upstream)
        if price is None:
            settings = report.upstream_settings(self.config, upstream)
            price = self._prices[upstream] = self.pricing.price(settings)
        return price

    async def report(self, since: dt.date, until: dt.date, top: int = 10) -> report.Report:
        """The report over [since, until], including counts not yet flushed."""
        await self.ledger.flush()
        return await asyncio.to_thread(
            report.read, self.config, self.pricing, since, until, top, self.ledger.path
        )

    async def repositories(self, since: dt.date, until: dt.date) -> list[tuple[str, str]]:
        """Every (upstream, repository) the ledger counted on days in [since, until]."""
        await self.ledger.flush()
        return await asyncio.to_thread(
            report.repositories, self.ledger.path, since.isoformat(), until.isoformat()
        )
