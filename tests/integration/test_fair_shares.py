"""Fair shares, not first come: strangers that take every fill slot and hang up, or
flood the password checks, do not make a real client wait or get 429.

A real registry behind a forwarder that stalls the strangers' blobs; each stranger
connects from a loopback address of its own (the proxy believes no X-Forwarded-For).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
import uuid
from pathlib import Path

import aiohttp

from cacheproxy.http.keys import CLIENT_AUTH
from cacheproxy.http.passwords import bcrypt_check
from tests.support.forwarder import Fault, Forwarder
from tests.support.images import basic_auth, push_blob
from tests.support.proxy import running_proxy
from tests.support.registry import RegistryProcess, write_htpasswd
from tests.support.sessions import session_from
from tests.support.waiting import eventually

STRANGERS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
PER_CLIENT = 2


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found is not None, name
    return float(found[1])


async def test_strangers_holding_every_slot_and_hanging_up_do_not_hold_up_a_client(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    """Four strangers take every fill slot with big blobs whose upstream stalls, and
    hang up at once; another client's miss on a small blob takes a slot from one of
    the abandoned fills (cancelled, its temp file gone) and is served, not queued
    behind them until the upstream's read timeout, nor refused."""
    name = f"fair/{uuid.uuid4().hex[:8]}"
    big = [
        await push_blob(forwarder.url, name, uuid.uuid4().bytes * 65_536)  # 1 MiB each
        for _ in range(len(STRANGERS) * PER_CLIENT)
    ]
    small_data = uuid.uuid4().bytes * 1000
    small = await push_blob(forwarder.url, name, small_data)
    # The big blobs' upstream sends 64 KiB, then nothing: their fills never end.
    stall = forwarder.set_fault(
        Fault(match=re.compile("|".join(d.split(":")[1] for d in big)), kind="stall", offset=65536)
    )
    settings = {"max_fills": len(big), "max_queued_fills": 16, "max_fills_per_client": PER_CLIENT}
    try:
        async with running_proxy(forwarder.url, tmp_path / "c", **settings) as proxy:
            for i, address in enumerate(STRANGERS):
                async with session_from(address) as http:
                    for digest in big[i * PER_CLIENT : (i + 1) * PER_CLIENT]:
                        resp = await http.get(f"{proxy.url}/v2/{name}/blobs/{digest}")
                        assert resp.status == 200
                        resp.close()  # hangs up as soon as the answer began
            assert proxy.fills.active == len(big)
            async with aiohttp.ClientSession() as http, asyncio.timeout(30):
                async with http.get(f"{proxy.url}/v2/{name}/blobs/{small}") as resp:
                    assert resp.status == 200
                    got = await resp.read()
                async with http.get(f"{proxy.url}/metrics") as resp:
                    metrics = await resp.text()
            assert hashlib.sha256(got).hexdigest() == small.split(":")[1]
            assert got == small_data
            assert metric(metrics, "cacheproxy_fills_preempted_total") >= 1
            # What was cancelled is gone from the disk; the small blob is kept.
            assert len(proxy.temp_files()) < len(big)
            assert proxy.blob_path(small).exists()
    finally:
        stall.release()
        forwarder.clear_faults()


async def test_a_request_that_hung_up_waits_for_no_slot(
    forwarder: Forwarder, tmp_path: Path
) -> None:
    """A client that gives up while its request waits for a fill slot leaves the
    queue at once: hung-up requests cannot fill it."""
    name = f"fair/{uuid.uuid4().hex[:8]}"
    held = await push_blob(forwarder.url, name, uuid.uuid4().bytes * 65_536)
    other = await push_blob(forwarder.url, name, uuid.uuid4().bytes * 1000)
    stall = forwarder.set_fault(Fault(match=held.split(":")[1], kind="stall", offset=65536))
    try:
        async with (
            running_proxy(forwarder.url, tmp_path / "c", max_fills=1) as proxy,
            aiohttp.ClientSession() as reader,
        ):
            # The one slot: a fill whose reader stays.
            holder = await reader.get(f"{proxy.url}/v2/{name}/blobs/{held}")
            assert holder.status == 200
            async with session_from("127.0.0.2") as http:
                waiting = asyncio.create_task(http.get(f"{proxy.url}/v2/{name}/blobs/{other}"))
                await eventually(
                    lambda: proxy.fills.gate.waiting >= 1, timeout=20, what="a miss waiting"
                )
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
            await eventually(
                lambda: not proxy.fills.gate.waiting, timeout=20, what="no miss waiting"
            )
            assert proxy.fills.active == 1
            holder.close()
    finally:
        stall.release()
        forwarder.clear_faults()


def refusals(passwords: object) -> int:
    refused = getattr(passwords, "refused", 0)
    return sum(refused.values()) if isinstance(refused, dict) else int(refused)


async def test_a_flood_of_wrong_passwords_from_one_address_spares_a_real_login(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """A stranger sends wrong passwords on 40 connections from one address, without
    pause; a real user's first login (never verified before) and the next ones all
    succeed, none answered 429; the stranger is told 401 or 429."""
    htpasswd = tmp_path / "htpasswd"
    write_htpasswd(htpasswd, "ci", "ci-password-1")
    config = tmp_path / "c.toml"
    config.write_text(f'[auth]\nhtpasswd = "{htpasswd}"\nanonymous = false\n')
    async with running_proxy(registry.url, tmp_path / "cache", config_file=config) as proxy:
        passwords = proxy.app[CLIENT_AUTH].passwords

        def slow(password: bytes, hashed: bytes) -> bool:
            time.sleep(0.05)  # a real cost's time, without its CPU
            return bcrypt_check(password, hashed)

        passwords.checker = slow
        stop = asyncio.Event()
        answers: list[int] = []
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), limit=40)
        async with aiohttp.ClientSession(connector=connector) as stranger:

            async def guess(n: int) -> None:
                for i in range(2000):
                    if stop.is_set():
                        return
                    headers = basic_auth("ci", f"guess-{n}-{i}")
                    async with stranger.get(f"{proxy.url}/v2/", headers=headers) as resp:
                        await resp.read()
                        answers.append(resp.status)

            flood = [asyncio.create_task(guess(n)) for n in range(40)]
            try:
                # The flood is at its bound: logins are being refused.
                await eventually(
                    lambda: refusals(passwords) >= 10, timeout=30, what="ten logins refused"
                )
                user = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
                async with aiohttp.ClientSession(connector=user) as http, asyncio.timeout(30):
                    for _ in range(3):
                        headers = basic_auth("ci", "ci-password-1")
                        async with http.get(f"{proxy.url}/v2/", headers=headers) as resp:
                            assert resp.status == 200, await resp.text()
                        await asyncio.sleep(0.05)
                    async with http.get(f"{proxy.url}/metrics", headers=headers) as resp:
                        metrics = await resp.text()
            finally:
                stop.set()
                await asyncio.gather(*flood, return_exceptions=True)
        assert set(answers) <= {401, 429}
        assert 429 in answers and 401 in answers
        refused = 'cacheproxy_password_checks_refused_total{reason="per_client"}'
        assert metric(metrics, refused) >= 10
