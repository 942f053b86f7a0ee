"""Attacks from outside that still get through: each test is one, replayed against
real proxies and the real registry, and asserts the answer the README's "Access
control, TLS and limits" section promises (so each fails while the gap is open).

Each stranger is a loopback address of its own (the proxy believes no
X-Forwarded-For).
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from pathlib import Path

import aiohttp

from cacheproxy.http.keys import CLIENT_AUTH
from cacheproxy.http.passwords import bcrypt_check
from tests.support.proxy import running_proxy
from tests.support.registry import RegistryProcess, write_htpasswd


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def session_from(address: str) -> aiohttp.ClientSession:
    """A client whose connections come from ``address``."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def status_of(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    """(status, the OCI error code or "") of a GET."""
    async with http.get(url) as resp:
        body = await resp.read()
        if resp.status < 400:
            return resp.status, ""
        found = re.search(rb'"code"\s*:\s*"([A-Z_]+)"', body)
        return resp.status, found[1].decode() if found else ""


STRANGERS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")


# --- password checks ----------------------------------------------------------------


async def test_four_addresses_guessing_do_not_refuse_a_real_users_first_login(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """Attack: the issue's flood of wrong passwords, from four addresses instead of
    one, each on four connections: each keeps its ``per_client`` share (4) of the 16
    checks (a new guess the moment one is answered 401), so every check is taken and
    a real user's first login (never verified before) is answered 429
    TOOMANYREQUESTS, however fairly the threads are shared among the checks already
    admitted: "full" refuses before any share is looked at.

    Expected ("a per-client share ... so that no set of a few strangers can starve
    others"): the real user's login waits its turn (behind at most one check of each
    stranger) and succeeds; a stranger is the one refused."""
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
        sessions = [
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(a, 0), limit=4))
            for a in STRANGERS
        ]

        async def guess(stranger: aiohttp.ClientSession, n: int) -> None:
            # Guesses all different: the same credentials at once would share a check.
            for i in range(2000):
                if stop.is_set():
                    return
                headers = basic("ci", f"guess-{n}-{i}")
                async with stranger.get(f"{proxy.url}/v2/", headers=headers) as resp:
                    await resp.read()

        flood = [
            asyncio.create_task(guess(s, n))
            for k, s in enumerate(sessions)
            for n in range(4 * k, 4 * k + 4)
        ]
        statuses: list[int] = []
        try:
            async with asyncio.timeout(30):
                while passwords.pending < passwords.max_pending:
                    await asyncio.sleep(0.01)
            async with session_from("127.0.0.9") as user, asyncio.timeout(30):
                for _ in range(3):
                    headers = basic("ci", "ci-password-1")
                    async with user.get(f"{proxy.url}/v2/", headers=headers) as resp:
                        statuses.append(resp.status)
                    await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.gather(*flood, return_exceptions=True)
            for s in sessions:
                await s.close()
    assert statuses == [200, 200, 200], statuses
