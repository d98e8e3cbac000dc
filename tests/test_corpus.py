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


# ----------------------------------------------------------------- input errors are clear (issue 15)


def files(paths, fmt="jsonl", **kw):
    return {"kind": "files", "paths": [str(p) for p in paths], "format": fmt, **kw}


def test_a_file_mostly_not_utf8_is_an_error_naming_it(tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e, d\u00e9j\u00e0 vu.".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin1\.txt: 6 of the 27 bytes read \(22%\) are not UTF-8 text \(invalid UTF-8 or NUL; the first at byte 3\)"):
        docs(files([latin1], "text"))
    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes("plain ascii text, but in UTF-16".encode("utf-16-le"))  # valid UTF-8, half NUL
    with pytest.raises(CorpusError, match=r"utf16\.txt: .* \(50%\) are not UTF-8 text"):
        docs(files([utf16], "text"))
    binary = tmp_path / "blob.jsonl"
    binary.write_bytes(bytes(range(256)) * 400)
    with pytest.raises(CorpusError, match=r"blob\.jsonl:1: not valid JSON"):
        docs(files([binary]))
    rows = tmp_path / "latin1.jsonl"  # valid JSON rows in the wrong encoding: judged once 64 KiB are read
    rows.write_bytes(b"".join(json.dumps({"text": f"caf\u00e9 {i}"}, ensure_ascii=False).encode("latin-1") + b"\n"
                              for i in range(10_000)))
    seen = []
    with pytest.raises(CorpusError, match=r"latin1\.jsonl: \d+ of the \d+ bytes read \(5%\) are not UTF-8 text"):
        for d in iter_documents(files([rows]), shuffle_seed=0, shuffle_buffer=1, max_doc_chars=1000, stats=CorpusStats()):
            seen.append(d)
    assert 0 < len(seen) < 10_000  # stopped part-way, not at the end of the file


def test_a_few_bad_bytes_are_decoded_counted_and_logged(tmp_path, caplog):
    p = tmp_path / "mostly.txt"
    p.write_bytes(b"good text " * 20 + b"\xff")  # 1 bad byte in 201: under 1%
    with caplog.at_level("WARNING", logger="randsae"):
        out, stats = docs(files([p], "text"))
    assert out == [("good text " * 20) + "\ufffd"] and stats.docs_non_utf8 == 1
    assert "mostly.txt: 1 of 201 bytes are not UTF-8 text" in caplog.text


def test_decoding_matches_python_replace_exactly(tmp_path):
    from randsae.corpus import _decode_counted

    for raw in (b"ok", b"\xff\xfeab\xc3", b"a\xe2\x82b\xf0\x9f\x98\x80c\xed\xa0\x80", bytes(range(200, 256))):
        text, bad, first = _decode_counted(raw, CorpusStats())
        assert text == raw.decode("utf-8", errors="replace")
        assert (bad == 0) == (first == -1) == (text == raw.decode("utf-8", errors="ignore"))


@pytest.mark.parametrize(("line", "kind"), [(b"5", "int"), (b"[1, 2]", "list"), (b'"text"', "str"), (b"null", "NoneType")])
def test_rows_that_are_not_objects_name_file_and_line(tmp_path, line, kind):
    p = tmp_path / "rows.jsonl"
    p.write_bytes(b'{"text": "fine"}\n' + line + b"\n")
    with pytest.raises(CorpusError, match=rf"rows\.jsonl:2: a row must be a JSON object with the field 'text'; got a {kind}"):
        docs(files([p]))


def test_a_directory_and_a_file_that_is_not_parquet(tmp_path):
    with pytest.raises(CorpusError, match=r"is a directory; list the files in it"):
        docs(files([tmp_path], "text"))
    fake = tmp_path / "fake.parquet"
    fake.write_text("this is not parquet")
    with pytest.raises(CorpusError, match=r"fake\.parquet: not a Parquet file"):
        docs(files([fake], "parquet"))


def test_shuffle_buffer_applies_to_files(tmp_path):
    p = tmp_path / "many.jsonl"
    p.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(200)))
    small, _ = docs(files([p]), buffer=1)
    big, _ = docs(files([p]), buffer=1000)
    assert small == [f"doc {i}" for i in range(200)]  # a buffer of one document keeps the file order
    assert big != small and sorted(big) == sorted(small)
