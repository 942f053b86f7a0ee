"""The shared tier's settings: :class:`SharedConfig` ([shared] in TOML,
``CACHEPROXY_SHARED_<KEY>`` in the environment) and the checks they must pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fields import ENV_PREFIX, ConfigError, about, coerce, setting, settings_of
from .upstreams import NETWORK_PATHS, REGION_RE

# S3's own bounds on a multipart upload's parts (all but the last).
MIN_PART = 5 * 1024 * 1024
MAX_PART = 5 * 1024**3


@dataclass(frozen=True)
class SharedConfig:
    """The shared tier: an S3 bucket (or an S3-compatible store) that many proxies,
    in many clusters, read blobs and manifests from by digest ([shared] in TOML)."""

    bucket: str = field(metadata=about("the bucket (required: no bucket, no shared tier)"))
    prefix: str = setting(
        "cacheproxy", "the key prefix: keys are `<prefix>/blobs/<algorithm>/<hex>`"
    )
    region: str | None = setting(None, "the bucket's AWS region", shown="boto3's")
    endpoint_url: str | None = setting(
        None, "an S3-compatible store (MinIO, Ceph RGW, R2, GCS interop)", shown="AWS S3"
    )
    addressing_style: str = setting(
        "auto", '"path" (http://host/bucket/key), "virtual" (http://bucket.host/key) or "auto"'
    )
    # Credentials: boto3's default chain, a profile, or a role assumed (refreshed).
    aws_profile: str | None = setting(None, "the AWS profile", shown="boto3's default chain")
    aws_role_arn: str | None = setting(None, "an IAM role assumed (renewed before expiry)")
    tls_verify: bool = setting(True, "check the store's certificate")
    ca_file: Path | None = setting(None, "the CA its certificate chains to", shown="the system's")
    redirect: bool = setting(
        False, "answer a blob GET with a 307 to a presigned URL once the bucket holds it"
    )
    redirect_expires: int = setting(300, "seconds a presigned URL handed to a client stays valid")
    # Credentials that sign the URLs handed to clients, when not the tier's own: a
    # presigned URL shows its access key id (X-Amz-Credential), so make it a key (or
    # role) that may only read the bucket. A profile, and/or a role assumed (from that
    # profile, else from the tier's credentials).
    redirect_profile: str | None = setting(
        None, "the AWS profile that signs redirect URLs", shown="the tier's credentials"
    )
    redirect_role_arn: str | None = setting(None, "an IAM role assumed to sign redirect URLs")
    # Uploads: one PUT below the threshold, multipart above it; parts of part_size.
    multipart_threshold: int = setting(
        64 * 1024 * 1024, "uploads above this size go in parts (at least 5MiB)", kind="size"
    )
    part_size: int = setting(
        16 * 1024 * 1024, "the size of an upload's parts (5MiB to 5GiB)", kind="size"
    )
    upload_concurrency: int = setting(4, "upload requests at once")
    max_pending_uploads: int = setting(1000, "uploads waiting (beyond: dropped, counted)")
    connections: int = setting(64, "connections to the bucket for reads")
    segments: int = setting(4, "ranges of one blob read at once")
    # Past these the bucket is given up for the upstream.
    connect_timeout: float = setting(2.0, "seconds to connect to the bucket")
    read_timeout: float = setting(10.0, "seconds without a byte from the bucket")
    expire_days: float | None = setting(
        None, "`cacheproxy gc --shared` deletes objects last written this many days ago"
    )
    # What a byte from the bucket costs (savings/prices.toml, [stores]).
    price: str = setting("aws-s3", "the store's price entry (savings/prices.toml [stores])")
    network_path: str = setting(
        "same-region", "how this deployment reaches it: " + ", ".join(NETWORK_PATHS)
    )

    @property
    def root(self) -> str:
        """The key prefix without slashes at either end ("" for the bucket's root)."""
        return self.prefix.strip("/")


SHARED = settings_of(SharedConfig, table="shared", env_prefix=f"{ENV_PREFIX}SHARED_")
_KINDS = {s.name: s.kind for s in SHARED}


def shared_from(raw: dict[str, Any]) -> SharedConfig:
    """The [shared] table (and CACHEPROXY_SHARED_* variables) as a checked SharedConfig."""
    typed = {key: coerce(f"shared.{key}", value, _KINDS[key]) for key, value in raw.items()}
    if not typed.get("bucket"):
        raise ConfigError("[shared]: bucket is required")
    shared = SharedConfig(**typed)
    if shared.addressing_style not in ("auto", "path", "virtual"):
        raise ConfigError("shared.addressing_style: expected auto, path or virtual")
    if not MIN_PART <= shared.part_size <= MAX_PART:
        raise ConfigError("shared.part_size: S3 takes parts of 5 MiB to 5 GiB")
    if shared.multipart_threshold < MIN_PART:
        raise ConfigError("shared.multipart_threshold: at least 5 MiB (S3's smallest part)")
    for key in ("upload_concurrency", "max_pending_uploads", "connections", "segments"):
        if getattr(shared, key) < 1:
            raise ConfigError(f"shared.{key} must be at least 1")
    if (shared.redirect_profile or shared.redirect_role_arn) and not shared.redirect:
        raise ConfigError(
            "shared.redirect_profile and redirect_role_arn sign redirect mode's URLs:"
            " they need redirect = true"
        )
    if not 1 <= shared.redirect_expires <= 7 * 24 * 3600:
        raise ConfigError("shared.redirect_expires: 1 s to 7 days (SigV4's limit)")
    if shared.network_path not in NETWORK_PATHS:
        raise ConfigError(f"shared.network_path must be one of {', '.join(NETWORK_PATHS)}")
    if shared.region is not None and not REGION_RE.fullmatch(shared.region):
        raise ConfigError(f"shared.region: not a region name: {shared.region!r}")
    return shared
