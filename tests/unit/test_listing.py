"""The next page's Link: this proxy's own path, naming the registry as the request did."""

from __future__ import annotations

from urllib.parse import quote

from cacheproxy.manifests.listing import NextPage


def test_the_next_page_names_the_registry_as_the_request_did() -> None:
    by_prefix = NextPage("reg-b.test/team/app")
    expected = '</v2/reg-b.test/team/app/tags/list?last=t2&n=2>; rel="next"'
    assert by_prefix.link("t2", "2") == expected
    by_ns = NextPage("team/app", "reg-b.test:5000")
    assert by_ns.link("t2", None) == (
        '</v2/team/app/tags/list?last=t2&ns=reg-b.test%3A5000>; rel="next"'
    )


def test_an_upstreams_link_becomes_this_proxys_own() -> None:
    named = NextPage("ghcr.io/team/app")
    upstream = '<https://ghcr.io/v2/team/app/tags/list?last=v1.2&n=50&evil=1>; rel="next"'
    assert named.from_upstream(upstream) == (
        '</v2/ghcr.io/team/app/tags/list?last=v1.2&n=50>; rel="next"'
    )
    # The registry's own path for the repository (without the prefix) is not kept.
    relative = '</v2/team/app/tags/list?last=b>; rel="next"'
    assert named.from_upstream(relative) == '</v2/ghcr.io/team/app/tags/list?last=b>; rel="next"'
    for useless in (
        None,
        "",
        '<https://ghcr.io/v2/team/app/tags/list?n=5>; rel="next"',  # nowhere to go on from
        '<https://ghcr.io/v2/team/app/tags/list?last=b>; rel="prev"',
        '<https://evil.example/elsewhere?last=b>; rel="next"',
        "no brackets at all",
    ):
        assert named.from_upstream(useless) is None, useless


def test_what_a_link_carries_is_encoded() -> None:
    named = NextPage("team/app", "reg.test\r\nSet-Cookie: x")
    link = named.from_upstream('</v2/x/tags/list?last=a%3E%0D%0Ab>; rel="next"')
    assert link is not None
    assert "\r" not in link and "\n" not in link and link.count(">") == 1


def test_an_upstreams_n_is_kept_only_as_ascii_digits() -> None:
    """An upstream's ``n`` that is not ASCII digits is dropped from the next page's
    link: ``"\\u00b2".isdigit()`` is true, and the client's next request would carry it
    to this proxy, which refuses it (400)."""
    named = NextPage("team/app")
    for odd in ("\u00b2", "\u0663", "1_0", " 5", "+5", "-1", "5 ", "1234567", ""):
        upstream = f'</v2/team/app/tags/list?last=b&n={quote(odd)}>; rel="next"'
        assert named.from_upstream(upstream) == '</v2/team/app/tags/list?last=b>; rel="next"', odd
    kept = named.from_upstream('</v2/team/app/tags/list?last=b&n=007>; rel="next"')
    assert kept == '</v2/team/app/tags/list?last=b&n=7>; rel="next"'
