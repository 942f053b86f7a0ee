"""BlobStore: content-addressed files that exist only once complete and verified."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cacheproxy.errors import CacheWriteFailed
from cacheproxy.layout import CacheLayout
from cacheproxy.oci import Digest
from cacheproxy.store.files import BlobStore
from tests.support.images import digest_of

DATA = b"layer bytes " * 10_000


def write_temp(store: BlobStore, digest: Digest, data: bytes) -> tuple[Path, int]:
    path, fd = store.new_temp(digest)
    os.write(fd, data)
    return path, fd


def test_a_blob_appears_only_when_committed_and_whole(store: BlobStore) -> None:
    digest = digest_of(DATA)
    tmp, fd = write_temp(store, digest, DATA)
    try:
        # Written but not committed: the store does not know it.
        assert not store.exists(digest)
        assert store.open(digest) is None
        assert store.size(digest) is None
        final = store.commit(tmp, fd, digest)
    finally:
        os.close(fd)
    assert final == store.path(digest)
    assert final.relative_to(store.blobs_dir).parts == ("sha256", digest.hex[:2], digest.hex)
    assert not tmp.exists()
    assert store.read(digest) == DATA
    assert store.size(digest) == len(DATA)
    blob = store.open(digest)
    assert blob is not None
    try:
        assert blob.size == len(DATA)
        assert os.pread(blob.fd, len(DATA), 0) == DATA
    finally:
        os.close(blob.fd)


def test_commit_replaces_in_one_step(store: BlobStore) -> None:
    # Two fills of one digest may both finish: the second rename replaces the first
    # file whole, and a reader of the first keeps its bytes.
    digest = digest_of(DATA)
    store.put(digest, DATA)
    first = store.open(digest)
    assert first is not None
    store.put(digest, DATA)
    try:
        assert os.pread(first.fd, len(DATA), 0) == DATA
    finally:
        os.close(first.fd)
    assert store.read(digest) == DATA
    assert list(store.tmp_dir.iterdir()) == []


def test_prepare_removes_what_a_crash_left_in_tmp_and_keeps_the_blobs(store: BlobStore) -> None:
    kept = digest_of(DATA)
    store.put(kept, DATA)
    for n in range(3):
        _, fd = write_temp(store, digest_of(bytes([n])), b"half a blob")
        os.close(fd)
    assert store.prepare() == 3
    assert list(store.tmp_dir.iterdir()) == []
    assert store.read(kept) == DATA
    assert store.prepare() == 0


def test_prepare_creates_the_layout(tmp_path: Path) -> None:
    store = BlobStore(CacheLayout(tmp_path / "new"))
    assert store.prepare() == 0
    assert store.blobs_dir.is_dir() and store.tmp_dir.is_dir()
    assert store.writable()


def test_scan_lists_every_complete_blob_with_its_size_and_time(store: BlobStore) -> None:
    blobs = {digest_of(bytes([n]) * (n + 1)): bytes([n]) * (n + 1) for n in range(5)}
    for digest, data in blobs.items():
        store.put(digest, data)
    # Neither a temp file nor a stray file outside the layout is a blob.
    _, fd = write_temp(store, digest_of(b"x"), b"x")
    os.close(fd)
    (store.blobs_dir / "README").write_text("not a blob")
    sizes, mtimes = store.scan()
    assert sizes == {str(d): len(data) for d, data in blobs.items()}
    assert mtimes.keys() == sizes.keys()
    for digest in blobs:
        assert mtimes[str(digest)] == store.path(digest).stat().st_mtime


def test_scan_of_an_empty_or_missing_store(tmp_path: Path) -> None:
    assert BlobStore(CacheLayout(tmp_path / "nothing")).scan() == ({}, {})


def test_delete_while_a_reader_holds_the_file(store: BlobStore) -> None:
    digest = digest_of(DATA)
    store.put(digest, DATA)
    reader = store.open(digest)
    assert reader is not None
    try:
        assert store.delete(digest)
        assert not store.exists(digest)
        assert store.open(digest) is None
        # The open descriptor still reads the whole blob (POSIX unlink semantics).
        assert os.pread(reader.fd, len(DATA), 0) == DATA
    finally:
        os.close(reader.fd)
    assert not store.delete(digest)
    assert store.scan() == ({}, {})


def test_discard_is_quiet_about_a_file_already_gone(store: BlobStore) -> None:
    path, fd = write_temp(store, digest_of(DATA), DATA)
    os.close(fd)
    store.discard(path)
    store.discard(path)
    assert not path.exists()


def test_a_file_that_cannot_be_made_is_a_failed_write_not_an_os_error(
    store: BlobStore, tmp_path: Path
) -> None:
    """No inode, no descriptor, no directory: the proxy's own shortage, answered as a
    full disk is (CacheWriteFailed: 503 UNAVAILABLE), never a traceback's OSError."""
    digest = digest_of(DATA)
    tmp, fd = write_temp(store, digest, DATA)
    try:
        # A file where the blob's directory goes: its commit cannot move it in.
        (store.blobs_dir / "sha256").write_bytes(b"")
        with pytest.raises(CacheWriteFailed, match="storing the blob failed"):
            store.commit(tmp, fd, digest)
    finally:
        os.close(fd)
    # A file where the temp directory was: no temp file can be made.
    store.tmp_dir.rename(tmp_path / "elsewhere")
    store.tmp_dir.write_bytes(b"")
    with pytest.raises(CacheWriteFailed, match="creating the blob's file failed"):
        store.new_temp(digest)
