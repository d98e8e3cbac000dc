"""Content fingerprints: what they cover (bytes, order, names where they matter) and the
on-disk memo that hashes a file again only when its size or mtime changes."""

from __future__ import annotations

import hashlib
import json
import os

from randsae import fingerprint
from randsae.fingerprint import (
    FingerprintCache,
    dir_fingerprint,
    file_fingerprint,
    files_fingerprint,
)


def _age(path, seconds: float = 60.0) -> None:
    """Set mtime in the past, so the memo trusts it (see fingerprint.FRESH_SECONDS)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def test_file_fingerprint_is_the_sha256_of_the_bytes(tmp_path):
    p = tmp_path / "a.bin"
    p.write_bytes(b"hello")
    assert file_fingerprint(p, FingerprintCache()) == "sha256:" + hashlib.sha256(b"hello").hexdigest()


def test_files_fingerprint_covers_bytes_and_order_not_names(tmp_path):
    a, b, c = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "renamed.txt"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    c.write_bytes(b"one")
    cache = FingerprintCache()
    ab = files_fingerprint([a, b], cache)
    assert files_fingerprint([c, b], cache) == ab  # same bytes under another name
    assert files_fingerprint([b, a], cache) != ab  # order changes the documents' order
    b.write_bytes(b"twO")
    assert files_fingerprint([a, b], FingerprintCache()) != ab


def test_dir_fingerprint_covers_names_and_top_level_files_only(tmp_path):
    d = tmp_path / "model"
    (d / "step0").mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"weights")
    (d / "step0" / "model.safetensors").write_bytes(b"init")
    fp = dir_fingerprint(d, FingerprintCache())
    (d / "step0" / "model.safetensors").write_bytes(b"other init")  # another revision: not read
    assert dir_fingerprint(d, FingerprintCache()) == fp
    (d / "tokenizer.json").write_text("{}")  # a new file loading reads
    assert dir_fingerprint(d, FingerprintCache()) != fp
    (d / "tokenizer.json").unlink()
    (d / "config.json").rename(d / "other.json")  # same bytes, another role
    assert dir_fingerprint(d, FingerprintCache()) != fp


def test_memo_hashes_once_and_again_when_size_or_mtime_change(tmp_path, monkeypatch):
    p = tmp_path / "big.bin"
    p.write_bytes(b"x" * 1000)
    _age(p)
    memo = tmp_path / "store" / ".fingerprints.json"
    calls = []
    real = fingerprint.sha256_file
    monkeypatch.setattr(fingerprint, "sha256_file", lambda f: calls.append(f) or real(f))

    first = FingerprintCache(memo)
    digest = first.digest(p)
    first.save()
    saved = json.loads(memo.read_text())
    assert saved[str(p.resolve())]["sha256"] == digest == hashlib.sha256(b"x" * 1000).hexdigest()
    assert FingerprintCache(memo).digest(p) == digest  # a new process: read from the memo
    assert len(calls) == 1
    p.write_bytes(b"y" * 1000)  # same size, new mtime
    _age(p, 30)
    assert FingerprintCache(memo).digest(p) == hashlib.sha256(b"y" * 1000).hexdigest()
    assert len(calls) == 2


def test_a_just_modified_file_is_not_memoised(tmp_path):
    p = tmp_path / "fresh.txt"
    p.write_text("now")  # an edit in the same timestamp tick would keep size and mtime
    cache = FingerprintCache(tmp_path / ".fingerprints.json")
    cache.digest(p)
    cache.save()
    assert not (tmp_path / ".fingerprints.json").exists()


def test_a_broken_memo_is_an_empty_memo(tmp_path):
    memo = tmp_path / ".fingerprints.json"
    memo.write_text("{not json")
    p = tmp_path / "a.txt"
    p.write_text("a")
    assert FingerprintCache(memo).digest(p) == hashlib.sha256(b"a").hexdigest()
