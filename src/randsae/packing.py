"""Packing tokenized documents into fixed-length sequences, and carving disjoint splits.

Each document is followed by the tokenizer's EOS token (the document separator), and
documents are concatenated and cut every ``ctx_len`` tokens, so a document may continue
into the next sequence. Splits are carved in the order eval, interp, train from one stream
of shuffled documents: when a split is full, the rest of the document it was reading is
dropped and the next split starts on a fresh document. No document contributes to two
splits, and a split's contents depend only on the corpus, the shuffle and the sizes of the
splits carved before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np


class Packed(NamedTuple):
    tokens: np.ndarray  # int32 [n_seq, ctx_len]
    doc_start: np.ndarray  # uint8 [n_seq, ctx_len]: 1 where a document's first token sits
    n_docs: int  # documents that contributed at least one token


def pack(docs: Iterator[list[int]], n_seq: int, ctx_len: int, eos_id: int) -> Packed:
    """Fill up to n_seq sequences from docs (consumed only as far as needed)."""
    tokens = np.zeros((n_seq, ctx_len), dtype=np.int32)
    starts = np.zeros((n_seq, ctx_len), dtype=np.uint8)
    flat_tok = tokens.reshape(-1)
    flat_start = starts.reshape(-1)
    total = n_seq * ctx_len
    pos = 0
    n_docs = 0
    while pos < total:
        doc = next(docs, None)
        if doc is None:
            break
        ids = [*doc, eos_id]
        take = min(len(ids), total - pos)
        flat_tok[pos : pos + take] = ids[:take]
        flat_start[pos] = 1
        pos += take
        n_docs += 1
    full = pos // ctx_len  # a trailing partial sequence is dropped
    return Packed(tokens[:full], starts[:full], n_docs)
