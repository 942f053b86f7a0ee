"""``cacheproxy ls``, ``gc`` and ``verify``: the cache directory. ``ls`` and ``gc --dry-run``
run beside a server; ``gc`` and ``verify`` change the cache and need it stopped."""

from __future__ import annotations

import asyncio

from ..config import Config
from ..lifecycle import apply, inventory
from ..lifecycle.plan import Plan, Rules
from ..runtime import open_runtime


def ls(config: Config, as_json: bool) -> int:
    async def main() -> str:
        # Reads only: runs beside a server, without its lock.
        async with open_runtime(config, writes=False) as rt:
            rows = await asyncio.to_thread(inventory.inventory, rt.store, rt.index)
        return inventory.render(rows, as_json)

    print(asyncio.run(main()))
    return 0


def gc(config: Config, dry_run: bool) -> int:
    rules = Rules(config.keep, config.expire_days, config.max_tags_per_repo)

    async def main() -> Plan:
        async with open_runtime(config, writes=not dry_run) as rt:
            return await asyncio.to_thread(apply.gc, rt.store, rt.index, rules, dry_run)

    plan = asyncio.run(main())
    print("would delete:" if dry_run else "deleted:")
    print("\n".join(plan.describe()))
    return 0


def verify(config: Config) -> int:
    async def main() -> tuple[int, list[str]]:
        async with open_runtime(config) as rt:
            return await asyncio.to_thread(apply.verify, rt.store, rt.index)

    count, removed = asyncio.run(main())
    print(f"verified {count} blobs; removed {len(removed)}")
    return 1 if removed else 0
