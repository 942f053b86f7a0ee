"""Numbers in protocol text are ASCII digits (RFC 5234 DIGIT), wherever they are read."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cacheproxy.manifests.images import blobs_of
from cacheproxy.numbers import is_digits, parse_digits
from cacheproxy.oci import OCI_MANIFEST, parse_accept
from cacheproxy.peers.signing import sign, verify
from cacheproxy.ranges import parse_content_range, parse_content_span, parse_range
from cacheproxy.swarm.lists import parse_spans
from cacheproxy.upstream.limits import parse_rate_limit, parse_retry_after
from cacheproxy.upstream.tokens import DEFAULT_EXPIRES_IN, _lifetime

# Digits int() takes or isdigit() admits that HTTP's DIGIT does not.
ARABIC_THREE = "\u0663"
DEVANAGARI_ONE = "\u0967"
FULLWIDTH_FIVE = "\uff15"
SUPERSCRIPT_TWO = "\u00b2"  # isdigit() is true, int() raises ValueError
NOT_ASCII = [ARABIC_THREE, DEVANAGARI_ONE, FULLWIDTH_FIVE, SUPERSCRIPT_TWO]


@given(st.text(max_size=25))
def test_parse_digits_takes_ascii_digits_alone(text: str) -> None:
    ascii_number = text != "" and all("0" <= c <= "9" for c in text)
    value = parse_digits(text)
    if ascii_number and len(text) <= 19:
        assert value == int(text)
    else:
        assert value is None
    assert is_digits(text) == ascii_number


@pytest.mark.parametrize("text", ["", " 1", "1 ", "+1", "-1", "1_000", "0x1", "1.0", *NOT_ASCII])
def test_what_int_takes_and_digit_does_not(text: str) -> None:
    assert parse_digits(text) is None


@pytest.mark.parametrize(
    "header",
    [
        f"bytes={ARABIC_THREE}-",
        f"bytes=0-{ARABIC_THREE}",
        f"bytes=-{FULLWIDTH_FIVE}",
        f"bytes={DEVANAGARI_ONE}0-20",
        f"bytes={SUPERSCRIPT_TWO}-",
        # re.IGNORECASE without re.ASCII folds U+017F (long s) into "s".
        "byte\u017f=0-1",
        # OWS is SP and HTAB (RFC 9110 5.6.3), not NO-BREAK SPACE.
        "\u00a0bytes=0-1",
    ],
)
def test_a_range_of_other_digits_is_ignored(header: str) -> None:
    # RFC 9110 14.1.1: 1*DIGIT; an invalid Range is ignored (14.2), as ranges.py does.
    assert parse_range(header) is None


def test_ows_around_a_range_is_still_allowed() -> None:
    wanted = parse_range(" \tbytes=3-4\t ")
    assert wanted is not None and wanted.resolve(10) == (3, 4)


@pytest.mark.parametrize(
    "value",
    [f"bytes {ARABIC_THREE}-9/10", f"bytes 0-9/1{ARABIC_THREE}", "bytes +0-9/10", "bytes 0_0-9/10"],
)
def test_a_content_range_of_other_digits_is_not_one(value: str) -> None:
    assert parse_content_span(value) is None
    assert parse_content_range(value) in ((None, None), (0, None))


def test_content_range_start_and_size() -> None:
    assert parse_content_range("bytes 10-99/100") == (10, 100)
    assert parse_content_range("bytes 10-99/*") == (10, None)
    assert parse_content_range(f"bytes 1{ARABIC_THREE}-99/100") == (None, None)


@pytest.mark.parametrize("digit", NOT_ASCII)
def test_peer_spans_of_other_digits_are_refused(digit: str) -> None:
    with pytest.raises(ValueError):
        parse_spans(f"0-{digit}")
    with pytest.raises(ValueError):
        parse_spans(f"{digit}-9")


@pytest.mark.parametrize("digit", NOT_ASCII)
def test_a_peer_signature_with_other_digits_in_its_time_is_refused(digit: str) -> None:
    secret = b"s" * 32
    good = sign(secret, "GET", "/p", "http://n", now=1000)
    ts, _, mac = good.partition(".")
    forged = f"{ts[:-1]}{digit}.{mac}"
    assert verify(secret, "GET", "/p", "http://n", good, clock=lambda: 1000)
    assert not verify(secret, "GET", "/p", "http://n", forged, clock=lambda: 1000)


@pytest.mark.parametrize("digit", NOT_ASCII)
def test_upstream_numbers_of_other_digits_are_not_read(digit: str) -> None:
    assert parse_retry_after(digit) is None
    assert parse_retry_after(" 7 ") == 7.0
    assert parse_rate_limit({"ratelimit-limit": digit, "ratelimit-remaining": "1"}, 0) is None
    limit = parse_rate_limit({"ratelimit-limit": f"100;w={digit}", "ratelimit-remaining": "1"}, 0)
    assert limit is not None and limit.window is None


@pytest.mark.parametrize(
    ("raw", "lifetime"),
    [
        (300, 300.0),
        ("300", 300.0),
        (ARABIC_THREE, DEFAULT_EXPIRES_IN),
        ("inf", DEFAULT_EXPIRES_IN),
        (float("inf"), DEFAULT_EXPIRES_IN),
        (float("nan"), DEFAULT_EXPIRES_IN),
        (True, DEFAULT_EXPIRES_IN),
        (None, DEFAULT_EXPIRES_IN),
        (0, DEFAULT_EXPIRES_IN),
    ],
)
def test_token_lifetimes(raw: object, lifetime: float) -> None:
    assert _lifetime(raw) == lifetime


@pytest.mark.parametrize("q", [f"0.{ARABIC_THREE}", DEVANAGARI_ONE, "nan", "inf", "1e0"])
def test_accept_qvalues_are_ascii(q: str) -> None:
    # RFC 9110 12.4.2: a qvalue that is not one makes the range unacceptable (q=0).
    (found,) = parse_accept([f"application/json;q={q}"])
    assert found.q == 0.0
    (ok,) = parse_accept(["application/json;q=0.5"])
    assert ok.q == 0.5


@pytest.mark.parametrize(
    "size", [SUPERSCRIPT_TWO, ARABIC_THREE, "1_0", "7", 1.5, True, -1, 2**63, None]
)
def test_a_manifests_blob_sizes_are_json_integers(size: object) -> None:
    # OCI image spec, "Descriptor": size is an int64; int() would take most of these.
    layer = {"digest": "sha256:" + "ab" * 32, "size": size}
    body = json.dumps({"config": {"digest": "sha256:" + "cd" * 32, "size": 2}, "layers": [layer]})
    manifests = [("sha256:" + "ef" * 32, body.encode(), OCI_MANIFEST)]
    with pytest.raises(ValueError, match="blob size"):
        blobs_of(manifests)
    layer["size"] = 42
    body = json.dumps({"config": {"digest": "sha256:" + "cd" * 32, "size": 2}, "layers": [layer]})
    assert blobs_of([("sha256:" + "ef" * 32, body.encode(), OCI_MANIFEST)])[layer["digest"]] == 42
