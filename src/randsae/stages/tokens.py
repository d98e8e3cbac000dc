"""Stage ``tokens``: one split of the corpus, tokenized and packed into a Zarr array.

Output::

    tokens.zarr     int32 [n_seq, ctx_len]
    doc_start.zarr  uint8 [n_seq, ctx_len], 1 at the first token of each document

meta.json records the corpus counters (documents read, used, empty, non-UTF-8, cut).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from tqdm import tqdm

from randsae.enums import SPLITS_IN_ORDER, TRAINED
from randsae.inputs import split_location
from randsae.stage import Config, OutputFile, Planned, PlanSoFar, Resources, StageContext, StageDef

log = logging.getLogger("randsae")

TOKENIZE_BATCH = 64


def split_params(corpus: dict, split: str) -> dict:
    """A split is determined by the corpus, the shuffle and the sizes of the splits carved
    before it (eval, then interp, then train): growing train never moves eval."""
    before = SPLITS_IN_ORDER[: SPLITS_IN_ORDER.index(split)]
    source, _ = split_location(corpus["source"])  # pinned files: the fingerprint, not the paths
    return {
        "corpus": source,
        "corpus_name": corpus["name"],
        "shuffle_seed": corpus["shuffle_seed"],
        "shuffle_buffer": corpus["shuffle_buffer"] if source["kind"] in ("hf", "files") else None,
        "max_doc_chars": corpus["max_doc_chars"],
        "split": split,
        "layout": {s: corpus["splits"][s] for s in (*before, split)},
    }


def expand(cfg: Config, so_far: PlanSoFar) -> Iterator[Planned]:
    """Per model: each split, tokenized with the trained model's tokenizer."""
    corpus = cfg["corpus"]
    where = split_location(corpus["source"])[1]
    located = {"location": where} if where else {}  # where pinned files are (no key covers it)
    for mname in cfg["models"]:
        trained = so_far.find("model", model=mname, variant=TRAINED)
        for split in SPLITS_IN_ORDER:
            yield Planned(f"{mname}/{corpus['name']}/{split}", split_params(corpus, split), {"model": trained},
                          {"model": mname, "corpus": corpus["name"], "split": split, **located})


def load_tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def tokenized(docs: Iterator[str], tokenizer, progress: tqdm) -> Iterator[list[int]]:
    """Token ids per document, tokenizing in batches but yielding one document at a time
    so the consumer can stop at an exact document."""
    batch: list[str] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == TOKENIZE_BATCH:
            yield from _encode(batch, tokenizer, progress)
            batch = []
    if batch:
        yield from _encode(batch, tokenizer, progress)


def _encode(batch: list[str], tokenizer, progress: tqdm) -> Iterator[list[int]]:
    for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
        progress.update(len(ids) + 1)
        yield ids


def run(ctx: StageContext) -> None:
    from randsae import zarr_io  # here, not at the top: importing the stages stays torch-free
    from randsae.corpus import CorpusError, CorpusStats, iter_documents
    from randsae.packing import pack

    p = ctx.params
    tokenizer = load_tokenizer(ctx.inputs["model"])
    if tokenizer.eos_token_id is None:
        raise CorpusError(f"tokenizer of {ctx.inputs['model']} has no EOS token to separate documents")
    stats = CorpusStats()
    docs = iter_documents(
        {**p["corpus"], **ctx.labels.get("location", {})}, shuffle_seed=p["shuffle_seed"], shuffle_buffer=p["shuffle_buffer"],
        max_doc_chars=p["max_doc_chars"], stats=stats,
    )
    total = sum(s["tokens"] for s in p["layout"].values())
    with tqdm(total=total, unit="tok", unit_scale=True, desc=f"tokens {ctx.spec['name']}") as bar:
        stream = tokenized(docs, tokenizer, bar)
        for split in SPLITS_IN_ORDER[: SPLITS_IN_ORDER.index(p["split"]) + 1]:
            size = p["layout"][split]
            n_seq = size["tokens"] // size["ctx_len"]
            packed = pack(stream, n_seq, size["ctx_len"], tokenizer.eos_token_id)
    got = packed.tokens.shape[0]
    if n_seq == 0:  # the plan's checks catch this first (randsae.checks)
        raise CorpusError(f"split {p['split']!r}: {size['tokens']} tokens is less than one sequence of "
                          f"ctx_len {size['ctx_len']}; ask for at least {size['ctx_len']} tokens")
    if stats.docs_used == 0:
        raise CorpusError(f"corpus {p['corpus_name']!r} has no usable document (read {stats.docs_read}: "
                          f"{stats.docs_empty} empty, {stats.docs_not_text} not text); check corpus.source")
    if got == 0:
        raise CorpusError(
            f"corpus {p['corpus_name']!r} ran out before split {p['split']!r}: 0 of {n_seq} sequences; "
            f"ask for fewer tokens in corpus.splits or use a larger corpus"
        )
    if got < n_seq:
        log.warning("corpus %s: split %s got %d of %d sequences (corpus exhausted)", p["corpus_name"], p["split"], got, n_seq)
    ctx_len = packed.tokens.shape[1]
    chunks = (max(1, min(got, 65536 // ctx_len)), ctx_len)
    zarr_io.create_array(ctx.workdir / "tokens.zarr", packed.tokens.shape, chunks, "int32", {"split": p["split"]})[:] = packed.tokens
    zarr_io.create_array(ctx.workdir / "doc_start.zarr", packed.doc_start.shape, chunks, "uint8")[:] = packed.doc_start
    ctx.info.update(
        {
            "n_seq": got,
            "n_seq_requested": n_seq,
            "ctx_len": ctx_len,
            "n_tokens": got * ctx_len,
            "n_docs_in_split": packed.n_docs,
            "corpus_stats": stats.as_dict(),
            "eos_id": tokenizer.eos_token_id,
            "vocab_size": len(tokenizer),
        }
    )


STAGE = StageDef(
    name="tokens",
    version=1,
    doc="one split of the corpus, tokenized and packed into sequences",
    inputs={"model": "model"},  # the trained model's tokenizer
    expand=expand,
    resources=Resources(mem_mb=8000, runtime=120),
    outputs=(
        OutputFile("tokens.zarr", "int32 [n_seq, ctx_len] token ids"),
        OutputFile("doc_start.zarr", "uint8 [n_seq, ctx_len], 1 at the first token of each document"),
    ),
    run=run,
)
