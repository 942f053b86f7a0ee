from __future__ import annotations

import asyncio

from cacheproxy.upstream.tokens import Token, TokenCache, parse_challenge


def test_parse_challenge() -> None:
    c = parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/alpine:pull,push"'
    )
    assert c is not None
    assert c.scheme == "bearer"
    assert c.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/alpine:pull,push",
    }
    basic = parse_challenge('Basic realm="Registry Realm"')
    assert basic is not None and basic.scheme == "basic"
    assert parse_challenge("") is None


async def test_token_cache_single_fetch_and_expiry() -> None:
    now = [1000.0]
    cache = TokenCache(clock=lambda: now[0])
    started = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    async def fetch() -> Token:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return Token(f"t{calls}", now[0] + 10, 10)

    key = ("realm", "svc", "repository:a:pull")
    waiters = [asyncio.create_task(cache.get(key, fetch)) for _ in range(20)]
    await started.wait()
    release.set()
    assert set(await asyncio.gather(*waiters)) == {"t1"}
    assert calls == 1 and cache.fetches == 1
    now[0] += 7.9  # still outside the refresh margin (20% of 10 s)
    assert await cache.get(key, fetch) == "t1"
    now[0] += 0.2  # inside the margin: refreshed before it expires
    assert await cache.get(key, fetch) == "t2"
    cache.invalidate(key, "t2")
    assert await cache.get(key, fetch) == "t3"


async def test_token_cache_keeps_the_most_recently_used_tokens() -> None:
    cache = TokenCache(clock=lambda: 0.0, limit=3)
    fetched: list[str] = []

    def key(repo: str) -> tuple[str, str, str]:
        return ("realm", "svc", f"repository:{repo}:pull")

    async def get(repo: str) -> str:
        async def fetch() -> Token:
            fetched.append(repo)
            return Token(f"t-{repo}", 3600.0, 3600.0)

        return await cache.get(key(repo), fetch)

    for repo in ("a", "b", "c"):
        await get(repo)
    await get("a")  # used again: now the most recent
    await get("d")  # over the limit: "b", the least recently used, goes
    assert len(cache) == 3
    assert cache.cached(key("b")) is None
    assert cache.cached(key("a")) == "t-a"
    assert fetched == ["a", "b", "c", "d"]
