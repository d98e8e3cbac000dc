"""Writing residual-stream activations to Zarr: the compute behind the ``activations`` stage.

Every requested layer of one model variant comes from one forward pass per batch
(:func:`randsae.forward.hidden_batches`, stopped after the deepest layer). Each layer's
``acts.zarr`` is [n_rows, d_model] in its stored dtype (bf16 as raw uint16, see
:mod:`randsae.zarr_io`), chunked along rows in whole sequences. With ``drop_first_position``
position 0 of every sequence is not stored: row r is then sequence r // (ctx_len - 1),
position 1 + r % (ctx_len - 1) (why: docs/data.md).

Chunks are written in order; after each chunk every layer's ``progress.json`` records how many
chunks are complete, so a killed job restarts from its last complete chunk. Writes run on a
background thread, overlapped with the next chunk's forward passes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import torch

from randsae import zarr_io

log = logging.getLogger("randsae")
PROGRESS = "progress.json"
ACTS = "acts.zarr"


class LayerTarget(NamedTuple):
    """One layer's output: where its acts.zarr goes and in which dtype it is stored."""

    layer: int
    workdir: Path
    dtype: str


def _chunks_done(workdir: Path, seqs_per_chunk: int) -> int:
    """Complete chunks of an earlier attempt (0 if none, or if it used another chunking)."""
    p = workdir / PROGRESS
    if not p.is_file() or not (workdir / ACTS).exists():
        return 0
    progress = json.loads(p.read_text())
    return progress["chunks_done"] if progress["seqs_per_chunk"] == seqs_per_chunk else 0


def _mark_done(workdir: Path, chunks_done: int, seqs_per_chunk: int) -> None:
    tmp = workdir / (PROGRESS + ".tmp")
    tmp.write_text(json.dumps({"chunks_done": chunks_done, "seqs_per_chunk": seqs_per_chunk}))
    os.replace(tmp, workdir / PROGRESS)


def write_activations(
    targets: Sequence[LayerTarget],
    model_dir: Path,
    tokens_dir: Path,
    model_dtype: str,
    drop_first_position: bool,
    batch_size: int,
    chunk_tokens: int,
    device: torch.device,
    desc: str = "activations",
) -> dict[int, dict[str, Any]]:
    """Every target layer's acts.zarr in one pass over the tokens; returns each layer's facts
    for meta.json ``info``. Resumes an interrupted attempt with the same chunking."""
    from randsae import forward
    from randsae.models.artifact import load_model_artifact

    loaded = load_model_artifact(model_dir, dtype=zarr_io.torch_dtype(model_dtype), device=device)
    tokens = forward.open_tokens(tokens_dir)
    n_seq, ctx_len = tokens.shape
    skip = 1 if drop_first_position else 0
    rows_per_seq = ctx_len - skip
    seqs_per_chunk = max(1, chunk_tokens // rows_per_seq)
    n_chunks = -(-n_seq // seqs_per_chunk)
    d_model = loaded.model.config.hidden_size
    layers = [t.layer for t in targets]
    arrays = {}
    for t in targets:
        path = t.workdir / ACTS
        attrs = {"layer": t.layer, "hookpoint": "block_output", "ctx_len": ctx_len,
                 "first_position_dropped": bool(skip), "rows_per_seq": rows_per_seq, "n_seq": n_seq}
        if _chunks_done(t.workdir, seqs_per_chunk):
            arrays[t.layer] = zarr_io.open_array(path, mode="r+")
        else:
            arrays[t.layer] = zarr_io.create_array(
                path, (n_seq * rows_per_seq, d_model), (seqs_per_chunk * rows_per_seq, d_model),
                t.dtype, attrs, overwrite=True)
    start_chunk = min(_chunks_done(t.workdir, seqs_per_chunk) for t in targets)
    if start_chunk:
        log.info("resuming at chunk %d of %d", start_chunk, n_chunks)
    t0 = time.perf_counter()

    def write_chunk(c: int, row0: int, outs: dict[int, list[torch.Tensor]]) -> None:
        for t in targets:
            zarr_io.write_rows(arrays[t.layer], row0, torch.cat(outs[t.layer]))
            _mark_done(t.workdir, c + 1, seqs_per_chunk)

    # One background writer: chunk c is converted, compressed and written while chunk c+1 is
    # computed (Blosc releases the GIL). At most one write is in flight, so memory holds at
    # most two chunks, and progress.json only ever counts chunks whose writes finished.
    with forward.progress_bar(desc, n_seq * ctx_len, start_chunk * seqs_per_chunk * ctx_len) as bar, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="acts-writer") as writer:
        pending: Future[None] | None = None
        for c in range(start_chunk, n_chunks):
            s0, s1 = c * seqs_per_chunk, min(n_seq, (c + 1) * seqs_per_chunk)
            outs: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
            for batch in forward.hidden_batches(loaded, tokens, range(s0, s1), layers, batch_size, device, bar):
                for layer in layers:
                    outs[layer].append(batch.hidden[layer][:, skip:].reshape(-1, d_model))
            if pending is not None:
                pending.result()  # re-raises a failed write here, before more work is queued
            pending = writer.submit(write_chunk, c, s0 * rows_per_seq, outs)
        if pending is not None:
            pending.result()
    elapsed = time.perf_counter() - t0
    infos = {}
    for t in targets:
        (t.workdir / PROGRESS).unlink(missing_ok=True)
        arr = arrays[t.layer]
        infos[t.layer] = {"n_rows": arr.shape[0], "d_model": d_model, "n_seq": n_seq, "ctx_len": ctx_len,
                          "device": str(device), "seconds": round(elapsed, 2),
                          "stored_bytes": arr.nbytes_stored(), "raw_bytes": arr.nbytes}
    return infos
