"""The shared tier's pure parts: keys, S3's XML, part plans, expiry, settings."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from cacheproxy.config import ConfigError, load_config
from cacheproxy.oci import parse_digest
from cacheproxy.shared.keys import (
    Listed,
    complete_body,
    digest_of_key,
    error_code,
    object_key,
    parse_list,
    parse_upload_id,
    parse_uploads,
    part_plan,
)
from cacheproxy.shared.lifecycle import expired

DIGEST = "sha256:" + "ab" * 32
NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'


def test_keys_name_digests_under_the_prefix_and_back() -> None:
    digest = parse_digest(DIGEST)
    assert object_key("cache/v1", digest) == "cache/v1/blobs/sha256/" + "ab" * 32
    assert object_key("", digest) == "blobs/sha256/" + "ab" * 32
    assert digest_of_key("cache/v1", object_key("cache/v1", digest)) == DIGEST
    for other in ("cache/v1/notes", "cache/v2/blobs/sha256/ab", "cache/v1/blobs/sha256/a/b"):
        assert digest_of_key("cache/v1", other) is None


def test_part_plans_cover_the_blob_in_at_most_ten_thousand_parts() -> None:
    mib = 1024 * 1024
    plan = part_plan(12 * mib, 5 * mib)
    assert plan == [(1, 0, 5 * mib), (2, 5 * mib, 5 * mib), (3, 10 * mib, 2 * mib)]
    huge = 200 * 1024**3
    plan = part_plan(huge, 5 * mib)
    assert len(plan) <= 10_000
    assert sum(length for _, _, length in plan) == huge
    assert [n for n, _, _ in plan] == list(range(1, len(plan) + 1))


def test_a_listing_with_url_encoded_keys_and_a_next_page() -> None:
    body = f"""<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult {NS}><Name>b</Name><Prefix>p/</Prefix><EncodingType>url</EncodingType>
<IsTruncated>true</IsTruncated><NextContinuationToken>tok+1</NextContinuationToken>
<Contents><Key>p/blobs/sha256/a%2Bb</Key><LastModified>2026-11-30T21:25:38.000Z</LastModified>
<ETag>"x"</ETag><Size>42</Size></Contents></ListBucketResult>""".encode()
    found, token = parse_list(body)
    when = dt.datetime(2026, 11, 30, 21, 25, 38, tzinfo=dt.UTC)
    assert found == [Listed("p/blobs/sha256/a+b", 42, when)]
    assert token == "tok+1"
    last, token = parse_list(body.replace(b"<IsTruncated>true", b"<IsTruncated>false"))
    assert token is None and len(last) == 1


def test_a_listed_size_is_ascii_digits_or_the_listing_is_refused() -> None:
    """``int()`` would read " 7", "1_0" and "\u0663" (ARABIC-INDIC THREE) as numbers and
    raise a bare error on "\u00b2": a listing carrying any of them is not believed."""

    def listing(size: str) -> bytes:
        return f"""<ListBucketResult {NS}><IsTruncated>false</IsTruncated>
<Contents><Key>p/blobs/sha256/ab</Key><LastModified>2026-11-30T21:25:38.000Z</LastModified>
<Size>{size}</Size></Contents></ListBucketResult>""".encode()

    assert parse_list(listing("42"))[0][0].size == 42
    for odd in ("\u00b2", "\u0663", "1_0", " 7", "+7", "-1", "7.0", "", "1" * 20):
        with pytest.raises(ValueError, match="Size is not a number"):
            parse_list(listing(odd))


def test_multipart_documents() -> None:
    uploads = f"""<ListMultipartUploadsResult {NS}><IsTruncated>true</IsTruncated>
<NextKeyMarker>k2</NextKeyMarker><NextUploadIdMarker>u2</NextUploadIdMarker>
<Upload><Key>k1</Key><UploadId>u1</UploadId><Initiated>2026-11-01T00:00:00.000Z</Initiated>
</Upload></ListMultipartUploadsResult>""".encode()
    pending, after = parse_uploads(uploads)
    assert [(p.key, p.upload_id) for p in pending] == [("k1", "u1")]
    assert after == ("k2", "u2")
    started = f"<InitiateMultipartUploadResult {NS}><UploadId>abc</UploadId>"
    assert parse_upload_id(f"{started}</InitiateMultipartUploadResult>".encode()) == "abc"
    # CompleteMultipartUpload may answer 200 with an error document (S3 API reference).
    assert error_code(b"<Error><Code>InternalError</Code></Error>") == "InternalError"
    assert error_code(b"<CompleteMultipartUploadResult/>") == ""
    assert error_code(b"not xml") == ""
    assert complete_body([(1, '"e&1"')]) == (
        b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber>"
        b'<ETag>"e&amp;1"</ETag></Part></CompleteMultipartUpload>'
    )


def test_expiry_goes_by_the_last_write() -> None:
    now = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
    old = Listed("a", 1, now - dt.timedelta(days=31))
    edge = Listed("b", 1, now - dt.timedelta(days=30))
    new = Listed("c", 1, now - dt.timedelta(days=29, hours=23))
    assert expired([old, edge, new], now, 30) == [old, edge]
    assert expired([old, edge, new], now, 0) == [old, edge, new]


def test_shared_settings_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[shared]\nbucket = "b"\npart_size = "8MiB"\nredirect = true\n')
    config = load_config(file=path, env={"CACHEPROXY_SHARED_PREFIX": "team/x"}, flags={})
    assert config.shared is not None
    assert (config.shared.bucket, config.shared.part_size) == ("b", 8 * 1024 * 1024)
    assert config.shared.redirect and config.shared.root == "team/x"
    assert load_config(env={}, flags={}).shared is None
    for bad in ('part_size = "1MiB"', 'addressing_style = "dns"', "segments = 0", 'bucked = "b"',
                'network_path = "moon"'):  # fmt: skip
        path.write_text(f'[shared]\nbucket = "b"\n{bad}\n')
        with pytest.raises(ConfigError):
            load_config(file=path, env={}, flags={})
    path.write_text("[shared]\nprefix = 'x'\n")
    with pytest.raises(ConfigError, match="bucket"):
        load_config(file=path, env={}, flags={})
