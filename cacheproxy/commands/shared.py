"""``cacheproxy gc --shared [--dry-run]``: expire the shared tier's objects by age.

It changes the bucket, not this node's cache, so it runs beside a server (no lock).
``--dry-run`` lists exactly what a run would delete: both walk the same listing
with the same rule (``shared.lifecycle.expired``).
"""

from __future__ import annotations

import asyncio
import datetime as dt

from ..config import Config
from ..shared.keys import Listed
from ..shared.lifecycle import gc
from ..shared.s3 import S3, S3Unavailable
from ..shared.tier import SharedTier
from ..upstream.aws import AwsClients
from ..upstream.credentials import boto3_ecr_client


def gc_shared(config: Config, dry_run: bool) -> int:
    """Delete (or list) the objects last written ``shared.expire_days`` ago or more."""
    settings = config.shared
    if settings is None:
        raise ValueError("gc --shared: no [shared] table in the configuration")
    if settings.expire_days is None:
        raise ValueError("gc --shared: set shared.expire_days (days since an object's last write)")
    expire_days = settings.expire_days

    async def main() -> list[Listed]:
        aws = AwsClients(boto3_ecr_client)
        tier = SharedTier(S3(settings, aws), settings)
        try:
            return await gc(tier, dt.datetime.now(dt.UTC), expire_days, dry_run)
        finally:
            await tier.close()
            aws.close()

    try:
        chosen = asyncio.run(main())
    except S3Unavailable as exc:
        raise ValueError(f"gc --shared: the bucket {settings.bucket}: {exc}") from None
    print("would delete:" if dry_run else "deleted:")
    for item in chosen:
        print(f"  {item.key}  {item.size}  {item.last_modified.isoformat()}")
    total = sum(item.size for item in chosen)
    print(f"{len(chosen)} objects, {total} bytes, last written before {expire_days:g} days ago")
    return 0
