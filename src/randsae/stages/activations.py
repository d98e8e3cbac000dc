"""Stage ``activations``: residual-stream activations of the train split, one artifact per
layer, all layers of a model variant computed in one forward pass.

Each layer's artifact holds ``acts.zarr``: [n_rows, d_model] in the configured dtype (bf16
stored as raw uint16, see :mod:`randsae.zarr_io`), chunked along rows and compressed with
Blosc/LZ4 + bit-shuffle. With ``drop_first_position`` (default) position 0 of every packed
sequence is not stored: sequences are cut from running text, so position 0 is an arbitrary
token with no context, and its residual norm is an attention-sink outlier that would
dominate SAE training. Row r is then sequence r // (ctx_len - 1), position 1 + r % (ctx_len - 1).

Chunks hold whole sequences and are written in order; after each chunk every layer's
``progress.json`` records how many chunks are complete, so a killed job restarts from its
last complete chunk (the partial directories live in the store's ``.partial/``). Writes
run on a background thread, overlapped with the next chunk's forward passes.

Control variant: the input-embedding noise is seeded per sequence from (artifact seed,
sequence index), so a rerun reproduces it whatever the batch size.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from randsae import zarr_io
from randsae.activations import run_to_layers
from randsae.store import Building, Store

log = logging.getLogger("randsae")
PROGRESS = "progress.json"
ACTS = "acts.zarr"


def device() -> torch.device:
    forced = os.environ.get("RANDSAE_DEVICE")
    if forced:
        return torch.device(forced)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


def build_group(specs: list[dict[str, Any]], store: Store, batch_size: int, chunk_tokens: int) -> None:
    """Build every not-yet-built artifact among ``specs`` (same model and tokens, different
    layers) in one pass over the tokens."""
    with contextlib.ExitStack() as stack:
        todo: list[tuple[dict[str, Any], Building]] = []
        for spec in specs:
            b = stack.enter_context(store.publish(spec))
            if b.done:
                log.info("%s already built by another process (%s)", spec["name"], b.workdir)
            else:
                todo.append((spec, b))
        if todo:
            _compute(todo, store, batch_size, chunk_tokens)
        # leaving the stack publishes each artifact (in reverse order, each atomically)


def _compute(todo: list[tuple[dict[str, Any], Building]], store: Store, batch_size: int, chunk_tokens: int) -> None:
    from randsae.models.artifact import load_model_artifact
    from randsae.models.variants import control_row_seeds, control_seed

    first = todo[0][0]
    model_ref, tokens_ref = first["inputs"]["model"], first["inputs"]["tokens"]
    params = first["params"]
    dev = device()
    loaded = load_model_artifact(store.root / model_ref, dtype=zarr_io.torch_dtype(params["model_dtype"]), device=dev)
    tokens = zarr_io.open_array(store.root / tokens_ref / "tokens.zarr")
    n_seq, ctx_len = tokens.shape
    skip = 1 if params["drop_first_position"] else 0
    rows_per_seq = ctx_len - skip
    seqs_per_chunk = max(1, chunk_tokens // rows_per_seq)
    n_chunks = -(-n_seq // seqs_per_chunk)
    d_model = loaded.model.config.hidden_size
    layers = [spec["params"]["layer"] for spec, _ in todo]
    arrays = {}
    for spec, b in todo:
        path = b.workdir / ACTS
        attrs = {"layer": spec["params"]["layer"], "hookpoint": "block_output", "ctx_len": ctx_len,
                 "first_position_dropped": bool(skip), "rows_per_seq": rows_per_seq, "n_seq": n_seq}
        if _chunks_done(b.workdir, seqs_per_chunk):
            arrays[spec["params"]["layer"]] = zarr_io.open_array(path, mode="r+")
        else:
            arrays[spec["params"]["layer"]] = zarr_io.create_array(
                path, (n_seq * rows_per_seq, d_model), (seqs_per_chunk * rows_per_seq, d_model),
                spec["params"]["dtype"], attrs, overwrite=True)
    start_chunk = min(_chunks_done(b.workdir, seqs_per_chunk) for _, b in todo)
    if start_chunk:
        log.info("resuming at chunk %d of %d", start_chunk, n_chunks)
    artifact_seed = loaded.info.get("seed") or 0
    t0 = time.perf_counter()
    def write_chunk(c: int, row0: int, outs: dict[int, list[torch.Tensor]]) -> None:
        for spec, b in todo:
            layer = spec["params"]["layer"]
            zarr_io.write_rows(arrays[layer], row0, torch.cat(outs[layer]))
            _mark_done(b.workdir, c + 1, seqs_per_chunk)

    # One background writer: chunk c is converted, compressed and written while chunk c+1 is
    # computed (Blosc releases the GIL). At most one write is in flight, so memory holds at
    # most two chunks, and progress.json only ever counts chunks whose writes finished.
    with tqdm(total=n_seq * ctx_len, initial=start_chunk * seqs_per_chunk * ctx_len, unit="tok", unit_scale=True,
              desc=f"activations {first['name'].rsplit('/', 1)[0]}") as bar, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="acts-writer") as writer:
        pending: Future[None] | None = None
        for c in range(start_chunk, n_chunks):
            s0, s1 = c * seqs_per_chunk, min(n_seq, (c + 1) * seqs_per_chunk)
            outs: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
            for b0 in range(s0, s1, batch_size):
                ids = torch.from_numpy(tokens[b0 : min(s1, b0 + batch_size)]).long().to(dev)
                with control_seed(loaded.model, control_row_seeds(artifact_seed, b0, ids.shape[0])):
                    hidden = run_to_layers(loaded.model, ids, layers)
                for layer in layers:
                    outs[layer].append(hidden[layer][:, skip:].reshape(-1, d_model))
                bar.update(ids.numel())
            if pending is not None:
                pending.result()  # re-raises a failed write here, before more work is queued
            pending = writer.submit(write_chunk, c, s0 * rows_per_seq, outs)
        if pending is not None:
            pending.result()
    elapsed = time.perf_counter() - t0
    for spec, b in todo:
        (b.workdir / PROGRESS).unlink(missing_ok=True)
        arr = arrays[spec["params"]["layer"]]
        b.extra_meta.update({"n_rows": arr.shape[0], "d_model": d_model, "n_seq": n_seq, "ctx_len": ctx_len,
                             "device": str(dev), "seconds": round(elapsed, 2),
                             "stored_bytes": arr.nbytes_stored(), "raw_bytes": arr.nbytes})
