"""The ``cacheproxy serve`` process as a user runs it, including kill -9 mid-fill."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.support.clients import skopeo
from tests.support.forwarder import Forwarder
from tests.support.images import push_blob, push_image
from tests.support.names import unique
from tests.support.ports import free_port
from tests.support.process import crash, serve_process
from tests.support.registry import RegistryProcess


async def test_serve_with_defaults_and_skopeo_pull(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    name = unique("cli")
    image = await push_image(registry.url, name, "v1", layer_sizes=(100_000,))
    home = tmp_path / "home"
    env = {"HOME": str(home), "XDG_CACHE_HOME": "", "CACHEPROXY_UPSTREAM": registry.url}
    async with serve_process(env=env, log=tmp_path / "serve.log") as (proc, url):
        out = tmp_path / "out"
        host = url.removeprefix("http://")
        ref = f"docker://{host}/{name}:v1"
        (await skopeo("copy", "--src-tls-verify=false", ref, f"dir:{out}")).check()
        assert (out / "manifest.json").read_bytes() == image.manifest
        # The default cache dir is under the user's cache directory.
        for blob in image.all_blobs():
            hexpart = blob.digest.split(":")[1]
            assert (home / ".cache/cacheproxy/blobs/sha256" / hexpart[:2] / hexpart).is_file()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_serve_on_either_loop(loop: str, registry: RegistryProcess, tmp_path: Path) -> None:
    name = unique("loop")
    data = hashlib.sha256(loop.encode()).digest() * 40_000
    digest = await push_blob(registry.url, name, data)
    args = ("--loop", loop, "--upstream", registry.url, "--cache-dir", str(tmp_path / "c"))
    async with (
        serve_process(*args, log=tmp_path / "serve.log") as (_, url),
        aiohttp.ClientSession() as http,
    ):
        for _ in range(2):  # a miss, then the cached file (sendfile, or the copy loop)
            async with http.get(f"{url}/v2/{name}/blobs/{digest}") as resp:
                assert resp.status == 200
                assert await resp.read() == data
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


async def test_bad_config_exits_with_a_message(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cacheproxy",
        "serve",
        "--listen",
        "nonsense",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"listen" in err and b"Traceback" not in err


async def test_kill_9_mid_fill_leaves_only_verified_content(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    name = unique("crash")
    data = hashlib.sha256(b"crash").digest() * (6 * 1024 * 1024 // 32)
    digest = await push_blob(forwarder.url, name, data)
    cache = tmp_path / "cache"
    args = ("--upstream", forwarder.url, "--cache-dir", str(cache))
    forwarder.throttle_bps = 4 * 1024 * 1024
    log = tmp_path / "serve.log"

    async with (
        serve_process(*args, log=log) as (proc, url),
        aiohttp.ClientSession() as http,
        http.get(f"{url}/v2/{name}/blobs/{digest}") as resp,
    ):
        assert resp.status == 200
        await resp.content.readexactly(512 * 1024)
        assert list((cache / "tmp").iterdir()), "the fill is under way"
        await crash(proc)
    hexpart = digest.split(":")[1]
    final = cache / "blobs/sha256" / hexpart[:2] / hexpart
    assert not final.exists(), "a half-fetched blob must never be in place"

    forwarder.throttle_bps = None
    async with serve_process(*args, log=log) as (proc, url):
        assert list((cache / "tmp").iterdir()) == [], "leftover temp files are cleaned at start"
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{url}/v2/{name}/blobs/{digest}") as resp,
        ):
            assert resp.status == 200
            assert await resp.read() == data
    assert final.read_bytes() == data


async def test_missing_credential_file_stops_the_start(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'listen = "127.0.0.1:{free_port()}"\ncache_dir = "{tmp_path / "cache"}"\n'
        '[[upstream]]\nname = "registry.example.com"\nusername = "robot"\n'
        f'password_file = "{tmp_path / "missing"}"\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cacheproxy",
        "serve",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"password_file" in err and b"Traceback" not in err
