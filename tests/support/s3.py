"""A real S3-compatible server on loopback for the shared tier: moto in server mode.

:class:`MotoS3` runs ``python -m moto.server`` as a process of ours (stopped by PID,
and stoppable mid-test to take the bucket away), answering standard S3 REST calls
with SigV4 presigned URLs and path-style addressing, as MinIO or Ceph RGW would.
The proxy under test finds its credentials in boto3's default chain: the
environment :data:`AWS_ENV` sets (moto accepts any keys).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.ports import free_port
from tests.support.process import stop_process
from tests.support.waiting import eventually_sync

#: boto3's default chain finds these first; no instance metadata is ever asked
#: (it would leave loopback), and no config file of the machine is read.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "shared-tier-test-key",
    "AWS_SECRET_ACCESS_KEY": "shared-tier-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}
#: Where the shared tier keeps blobs in its bucket by default (its ``prefix``).
PREFIX = "cache/v1/blobs/"


def object_key(digest: str) -> str:
    """The bucket key of a blob under the default prefix, as the tier lays it out."""
    algorithm, hexpart = digest.split(":")
    return f"{PREFIX}{algorithm}/{hexpart}"


class MotoS3:
    """moto's S3 in server mode on 127.0.0.1; ``start``/``stop`` may be called again."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self._log = workdir / "moto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self._log, "ab") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        proc = self._proc

        def answers() -> bool:
            assert proc.poll() is None, self._log.read_text()
            try:
                with opener.open(self.url + "/moto-api/", timeout=1.0):
                    return True
            except (urllib.error.URLError, OSError):
                return False

        eventually_sync(answers, timeout=30, interval=0.1, what="moto server answering")

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None

    def client(self) -> Any:
        """A boto3 S3 client of the test's own (to look into, or tamper with, the bucket)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session(
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        ).client(
            "s3",
            endpoint_url=self.url,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def new_bucket(self) -> str:
        """A bucket no other test uses."""
        name = f"cacheproxy-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Every object under ``prefix``: key -> size."""
        found: dict[str, int] = {}
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        for page in pages:
            for item in page.get("Contents", []):
                found[item["Key"]] = item["Size"]
        return found

    def __enter__(self) -> MotoS3:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def shared_table(endpoint: str, bucket: str, **extra: object) -> str:
    """A ``[shared]`` TOML table for ``bucket`` at ``endpoint`` (path-style addressing)."""
    lines = [
        "[shared]",
        f'bucket = "{bucket}"',
        'prefix = "cache/v1"',
        f'endpoint_url = "{endpoint}"',
        'region = "us-east-1"',
        'addressing_style = "path"',
    ]
    for key, value in extra.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        else:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def aws_environment() -> Iterator[None]:
    """Set :data:`AWS_ENV` in this process (in-process proxies), restoring it after."""
    import os

    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
