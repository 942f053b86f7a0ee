"""Pricing tables: load them (packaged or the user's own file) and find the price an
upstream really pays.

The numbers live in ``prices.toml``, each with its source page and the date it was
read; this module only checks their shape and resolves an upstream (its name, its
credentials, its ``network_path`` and ``price_region``) to the charges that apply.
"""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import NETWORK_PATHS, SharedConfig, UpstreamConfig
from ..registries import ecr_host
from .stores import Store, StoreError, parse_stores
from .tiers import GIB, Band, Schedule

PACKAGED = "prices.toml"


class PricingError(ValueError):
    """A pricing file that cannot be used; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Charge:
    """One published price: flat over regions, or per region."""

    id: str
    title: str
    source: str
    read: str
    note: str
    # Region -> schedule; the key None holds a price that is the same everywhere.
    schedules: Mapping[str | None, Schedule]
    region_notes: Mapping[str, str]
    default_region: str | None

    def schedule_for(self, region: str | None) -> tuple[Schedule, str | None, bool]:
        """(schedule, region priced, whether that region was the one asked for)."""
        if None in self.schedules:
            return self.schedules[None], None, True
        if region is not None and region in self.schedules:
            return self.schedules[region], region, True
        assert self.default_region is not None  # checked on load
        return self.schedules[self.default_region], self.default_region, False


@dataclass(frozen=True, slots=True)
class Limit:
    """A registry's pull rate limit."""

    id: str
    title: str
    pulls: int
    window_seconds: int
    per: str
    source: str
    read: str
    note: str

    def describe(self) -> str:
        hours = self.window_seconds / 3600
        window = f"{hours:g}h" if hours >= 1 else f"{self.window_seconds}s"
        return f"{self.pulls}/{window}"


@dataclass(frozen=True, slots=True)
class RegistryCharges:
    """Which charges each network path pays for the registries ``match`` names."""

    id: str
    title: str
    match: tuple[str, ...]
    auth: str | None
    paths: Mapping[str, tuple[str, ...]]
    limit: str | None
    note: str

    def fits(self, name: str, authenticated: bool) -> bool:
        if self.auth is not None and self.auth != (
            "authenticated" if authenticated else "anonymous"
        ):
            return False
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.match)


@dataclass(frozen=True, slots=True)
class Applied:
    """A charge as applied to one upstream: the region priced and whether it fell back."""

    charge: Charge
    schedule: Schedule
    region: str | None
    fallback: bool


@dataclass(frozen=True, slots=True)
class Price:
    """Everything the report needs to put a number on one upstream's savings."""

    upstream: str
    registry: RegistryCharges
    network_path: str
    region: str | None
    charges: tuple[Applied, ...]
    limit: Limit | None

    @property
    def schedules(self) -> tuple[Schedule, ...]:
        return tuple(a.schedule for a in self.charges)


@dataclass(frozen=True, slots=True)
class StorePrice:
    """What the shared tier's store charges this deployment: requests, the transfer
    on its network path, and storage."""

    store: Store
    network_path: str
    region: str | None
    transfer: tuple[Applied, ...]
    storage: Applied | None

    @property
    def schedules(self) -> tuple[Schedule, ...]:
        return tuple(a.schedule for a in self.transfer)


@dataclass(frozen=True, slots=True)
class Pricing:
    """A loaded, checked pricing file."""

    origin: str
    charges: Mapping[str, Charge]
    limits: Mapping[str, Limit]
    registries: tuple[RegistryCharges, ...]
    stores: Mapping[str, Store] = field(default_factory=dict)

    def store_price(self, shared: SharedConfig) -> StorePrice | None:
        """The shared tier's prices ([stores] entry ``shared.price``; None if absent)."""
        store = self.stores.get(shared.price)
        if store is None:
            return None

        def applied(charge_id: str) -> Applied:
            charge = self.charges[charge_id]
            schedule, priced, exact = charge.schedule_for(shared.region)
            return Applied(charge, schedule, priced, fallback=not exact)

        transfer = tuple(applied(c) for c in store.paths[shared.network_path])
        storage = applied(store.storage) if store.storage else None
        return StorePrice(store, shared.network_path, shared.region, transfer, storage)

    def price(self, up: UpstreamConfig) -> Price:
        """The charges ``up`` pays per byte on its network path, and its pull limit."""
        authenticated = is_authenticated(up)
        registry = next((r for r in self.registries if r.fits(up.name, authenticated)), None)
        if registry is None:
            # A user's file without a catch-all entry: count the bytes, price nothing,
            # and say why in the report rather than failing it.
            registry = RegistryCharges(
                id="unpriced",
                title=f"no entry in {self.origin}",
                match=(up.name,),
                auth=None,
                paths={path: () for path in NETWORK_PATHS},
                limit=None,
                note="",
            )
        ecr = ecr_host(up.name)
        region = up.price_region or up.region or (ecr.region if ecr else None)
        applied = []
        for charge_id in registry.paths[up.network_path]:
            charge = self.charges[charge_id]
            schedule, priced, exact = charge.schedule_for(region)
            applied.append(Applied(charge, schedule, priced, fallback=not exact))
        limit = self.limits[registry.limit] if registry.limit else None
        return Price(up.name, registry, up.network_path, region, tuple(applied), limit)


def is_authenticated(up: UpstreamConfig) -> bool:
    """Whether the proxy pulls from ``up`` with credentials of its own."""
    return bool(
        up.username
        or up.password
        or up.password_file
        or up.password_env
        or up.docker_config
        or up.ecr
    )


def load_pricing(path: Path | None = None) -> Pricing:
    """The user's pricing file, or the packaged one; raises PricingError."""
    if path is None:
        text = resources.files(__package__).joinpath(PACKAGED).read_text(encoding="utf-8")
        origin = f"packaged {PACKAGED}"
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PricingError(f"cannot read pricing file {path}: {exc.strerror}") from exc
        origin = str(path)
    return parse_pricing(text, origin)


def parse_pricing(text: str, origin: str = "pricing") -> Pricing:
    """Check and load the text of a pricing file."""
    try:
        # Decimal, not float: 0.085 must stay 0.085 for the dollars to be exact.
        doc = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise PricingError(f"{origin}: {exc}") from exc
    if doc.get("format") != 1:
        raise PricingError(f"{origin}: expected format = 1")
    charges = {
        cid: _charge(origin, cid, raw) for cid, raw in _table(origin, doc, "charges").items()
    }
    limits = {lid: _limit(origin, lid, raw) for lid, raw in _table(origin, doc, "limits").items()}
    raw_registries = doc.get("registries", [])
    if not isinstance(raw_registries, list) or not raw_registries:
        raise PricingError(f"{origin}: expected [[registries]] entries")
    registries = tuple(_registry(origin, raw, charges, limits) for raw in raw_registries)
    try:
        stores = parse_stores(origin, doc, charges)
    except StoreError as exc:
        raise PricingError(str(exc)) from None
    return Pricing(origin, charges, limits, registries, stores)


# --- shape checks --------------------------------------------------------------------


def _table(origin: str, doc: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise PricingError(f"{origin}: {key} must be a table")
    return value


def _text(where: str, raw: Mapping[str, Any], key: str, required: bool = True) -> str:
    value = raw.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise PricingError(f"{where}: {key} must be a non-empty string")
    return value


def _decimal(where: str, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise PricingError(f"{where}: expected a number, got {value!r}")
    return Decimal(value)


def _schedule(where: str, raw: Mapping[str, Any], bytes_per_gb: int) -> Schedule:
    bands_raw = raw.get("bands")
    if not isinstance(bands_raw, list) or not bands_raw:
        raise PricingError(f"{where}: bands must be a non-empty list")
    bands = []
    for i, band in enumerate(bands_raw):
        if not isinstance(band, dict) or set(band) - {"next_gb", "usd_per_gb"}:
            raise PricingError(f"{where}: band {i} takes next_gb and usd_per_gb only")
        width = band.get("next_gb")
        bands.append(
            Band(
                _decimal(f"{where} band {i}", band.get("usd_per_gb")),
                None if width is None else _decimal(f"{where} band {i}", width),
            )
        )
    try:
        return Schedule(tuple(bands), _decimal(where, raw.get("free_gb", 0)), bytes_per_gb)
    except ValueError as exc:
        raise PricingError(f"{where}: {exc}") from exc


def _charge(origin: str, cid: str, raw: Any) -> Charge:
    where = f"{origin}: charges.{cid}"
    if not isinstance(raw, dict):
        raise PricingError(f"{where}: expected a table")
    bytes_per_gb = raw.get("bytes_per_gb", GIB)
    if not isinstance(bytes_per_gb, int) or bytes_per_gb <= 0:
        raise PricingError(f"{where}: bytes_per_gb must be a positive integer")
    schedules: dict[str | None, Schedule] = {}
    notes: dict[str, str] = {}
    regions = raw.get("regions")
    default_region = raw.get("default_region")
    if regions is None:
        schedules[None] = _schedule(where, raw, bytes_per_gb)
    else:
        if "bands" in raw or not isinstance(regions, dict) or not regions:
            raise PricingError(f"{where}: either bands or a non-empty regions table, not both")
        for region, body in regions.items():
            if not isinstance(body, dict):
                raise PricingError(f"{where}.regions.{region}: expected a table")
            schedules[region] = _schedule(f"{where}.regions.{region}", body, bytes_per_gb)
            if body.get("note"):
                notes[region] = _text(f"{where}.regions.{region}", body, "note")
        if default_region not in regions:
            raise PricingError(f"{where}: default_region must name one of its regions")
    read = _text(where, raw, "read")
    _check_date(where, read)
    return Charge(
        id=cid,
        title=_text(where, raw, "title"),
        source=_text(where, raw, "source"),
        read=read,
        note=_text(where, raw, "note", required=False),
        schedules=schedules,
        region_notes=notes,
        default_region=default_region,
    )


def _limit(origin: str, lid: str, raw: Any) -> Limit:
    where = f"{origin}: limits.{lid}"
    if not isinstance(raw, dict):
        raise PricingError(f"{where}: expected a table")
    pulls, window = raw.get("pulls"), raw.get("window_seconds")
    if not isinstance(pulls, int) or not isinstance(window, int) or pulls <= 0 or window <= 0:
        raise PricingError(f"{where}: pulls and window_seconds must be positive integers")
    read = _text(where, raw, "read")
    _check_date(where, read)
    return Limit(
        id=lid,
        title=_text(where, raw, "title"),
        pulls=pulls,
        window_seconds=window,
        per=_text(where, raw, "per"),
        source=_text(where, raw, "source"),
        read=read,
        note=_text(where, raw, "note", required=False),
    )


def _registry(
    origin: str, raw: Any, charges: Mapping[str, Charge], limits: Mapping[str, Limit]
) -> RegistryCharges:
    if not isinstance(raw, dict):
        raise PricingError(f"{origin}: [[registries]] entries must be tables")
    rid = _text(f"{origin}: registries", raw, "id")
    where = f"{origin}: registry {rid}"
    match = raw.get("match")
    if not isinstance(match, list) or not match or not all(isinstance(m, str) for m in match):
        raise PricingError(f"{where}: match must be a list of patterns")
    auth = raw.get("auth")
    if auth not in (None, "anonymous", "authenticated"):
        raise PricingError(f"{where}: auth must be anonymous or authenticated")
    paths_raw = raw.get("paths")
    if not isinstance(paths_raw, dict) or set(paths_raw) != set(NETWORK_PATHS):
        raise PricingError(f"{where}: paths must name exactly {', '.join(NETWORK_PATHS)}")
    paths: dict[str, tuple[str, ...]] = {}
    for path, ids in paths_raw.items():
        if not isinstance(ids, list) or any(i not in charges for i in ids):
            raise PricingError(f"{where}: paths.{path} must list known charges, got {ids!r}")
        paths[path] = tuple(ids)
    limit = raw.get("limit")
    if limit is not None and limit not in limits:
        raise PricingError(f"{where}: unknown limit {limit!r}")
    return RegistryCharges(
        id=rid,
        title=_text(where, raw, "title"),
        match=tuple(match),
        auth=auth,
        paths=paths,
        limit=limit,
        note=_text(where, raw, "note", required=False),
    )


def _check_date(where: str, value: str) -> None:
    try:
        date.fromisoformat(value)
    except ValueError:
        raise PricingError(f"{where}: read must be a date, YYYY-MM-DD") from None
