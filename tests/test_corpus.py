"""Corpus sources and packing: bad documents are counted, never fatal; splits disjoint."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from randsae.corpus import CorpusError, CorpusStats, buffer_shuffle, iter_documents
from randsae.packing import pack


def docs(source, seed=0, buffer=100, max_chars=10_000):
    stats = CorpusStats()
    return list(iter_documents(source, shuffle_seed=seed, shuffle_buffer=buffer, max_doc_chars=max_chars, stats=stats)), stats


def test_packaged_kjv_is_chapters_in_seeded_order():
    a, stats = docs({"kind": "packaged", "name": "kjv"}, max_chars=1_000_000)
    b, _ = docs({"kind": "packaged", "name": "kjv"}, max_chars=1_000_000)
    c, _ = docs({"kind": "packaged", "name": "kjv"}, seed=1, max_chars=1_000_000)
    assert len(a) == 1189 == stats.docs_used
    assert a == b and a != c and sorted(a) == sorted(c)
    assert any(d.startswith("Genesis 1\n") for d in a)


def test_files_bad_documents_are_counted(tmp_path):
    p = tmp_path / "c.jsonl"
    with open(p, "wb") as f:
        f.write(json.dumps({"text": "good one"}).encode() + b"\n")
        f.write(json.dumps({"text": "   "}).encode() + b"\n")
        f.write(json.dumps({"text": None}).encode() + b"\n")
        f.write(b'{"text": "caf\xe9 latin-1"}\n')
        f.write(json.dumps({"text": "x" * 2500}).encode() + b"\n")
    out, stats = docs({"kind": "files", "paths": [str(p)], "format": "jsonl", "text_field": "text"}, max_chars=1000)
    assert stats.docs_read == 5 and stats.docs_empty == 1 and stats.docs_not_text == 1
    assert stats.docs_non_utf8 == 1 and stats.docs_split_long == 1 and stats.docs_used == 3
    assert sorted(len(d) for d in out if set(d) == {"x"}) == [500, 1000, 1000]
    assert any("\ufffd" in d for d in out)


def test_text_and_parquet_files(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"first document")
    (tmp_path / "b.txt").write_bytes(b"")
    out, stats = docs({"kind": "files", "paths": [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], "format": "text"})
    assert out == ["first document"] and stats.docs_empty == 1
    pq.write_table(pa.table({"body": ["p1", "p2", ""]}), tmp_path / "d.parquet")
    out, stats = docs({"kind": "files", "paths": [str(tmp_path / "d.parquet")], "format": "parquet", "text_field": "body"})
    assert sorted(out) == ["p1", "p2"] and stats.docs_empty == 1
    with pytest.raises(CorpusError, match="no column 'text'"):
        docs({"kind": "files", "paths": [str(tmp_path / "d.parquet")], "format": "parquet", "text_field": "text"})
    with pytest.raises(CorpusError, match="does not exist"):
        docs({"kind": "files", "paths": [str(tmp_path / "nope.txt")], "format": "text"})


def test_hf_offline_error_says_how_to_fix(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CorpusError, match="cannot open HuggingFace dataset EleutherAI/rpj-v2-sample.*kind: files"):
        docs({"kind": "hf", "id": "EleutherAI/rpj-v2-sample", "split": "train", "text_field": "raw_content"})


def test_buffer_shuffle_is_a_seeded_permutation():
    a = list(buffer_shuffle(range(1000), 50, np.random.default_rng(0)))
    b = list(buffer_shuffle(range(1000), 50, np.random.default_rng(0)))
    assert a == b and sorted(a) == list(range(1000)) and a != list(range(1000))


def test_pack_separates_documents_and_marks_starts():
    stream = iter([[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]])
    p = pack(stream, n_seq=2, ctx_len=4, eos_id=0)
    assert p.tokens.tolist() == [[1, 2, 3, 0], [4, 5, 0, 6]]
    assert p.doc_start.tolist() == [[1, 0, 0, 0], [1, 0, 0, 1]]
    # the next split starts on a fresh document: the rest of doc 3 was dropped
    nxt = pack(stream, n_seq=1, ctx_len=4, eos_id=0)
    assert nxt.tokens.shape == (0, 4) and nxt.n_docs == 0


def test_pack_drops_partial_tail():
    p = pack(iter([[1, 2, 3, 4, 5]]), n_seq=3, ctx_len=4, eos_id=0)
    assert p.tokens.tolist() == [[1, 2, 3, 4]]
