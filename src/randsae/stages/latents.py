"""Stage ``latents``: run the model and the SAE over the interp split and cache each token's
top-k latents (layout: :mod:`randsae.latents`, docs/latents.md).

Inputs (roles): ``model`` (model artifact of the SAE's variant), ``sae`` (sae artifact:
sae.safetensors + cfg.json, loaded with ``randsae.sae.TopKSAE.load``), ``tokens`` (interp
split). The layer comes from :func:`randsae.latents.resolve_hookpoint`.

Phases:
1. encode: chunks of whole sequences, written in order; after each chunk ``progress.json``
   records how many are complete, so a killed job resumes from its last complete chunk. The
   control variant's noise is seeded per sequence (see docs/variants.md), as in every stage.
2. statistics: one pass over the finished cache (firing counts, max, sums).
3. index: counting sort by latent through bounded spill buckets (rebuilt if interrupted).

Execution settings are not parameters (they do not change the artifact's meaning); they come
from the environment: RANDSAE_LATENTS_BATCH_SIZE (sequences per forward, default 8),
RANDSAE_LATENTS_CHUNK_TOKENS (tokens per resumable chunk, default 65536),
RANDSAE_LATENTS_SORT_BUDGET (index entries sorted in memory at once, default 2**24) and
RANDSAE_DEVICE.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from randsae import zarr_io
from randsae.activations import run_to_layers
from randsae.latents import (
    DEFAULT_SORT_BUDGET,
    INDICES,
    VALUES,
    Hookpoint,
    create_cache_arrays,
    encode_hidden,
    finish_cache,
    resolve_hookpoint,
)
from randsae.stages import StageContext

log = logging.getLogger("randsae")
PROGRESS = "progress.json"


@dataclass(frozen=True)
class CacheSettings:
    """How to compute, not what: none of these change the artifact (except control noise,
    which depends on the batch size, as in the activations stage)."""

    batch_size: int = 8
    chunk_tokens: int = 65536
    sort_budget: int = DEFAULT_SORT_BUDGET

    @classmethod
    def from_env(cls) -> CacheSettings:
        env = os.environ
        return cls(
            batch_size=int(env.get("RANDSAE_LATENTS_BATCH_SIZE", cls.batch_size)),
            chunk_tokens=int(env.get("RANDSAE_LATENTS_CHUNK_TOKENS", cls.chunk_tokens)),
            sort_budget=int(env.get("RANDSAE_LATENTS_SORT_BUDGET", cls.sort_budget)),
        )


def run(ctx: StageContext) -> None:
    hook = resolve_hookpoint(ctx.inputs["sae"], ctx.store.root)
    log.info("%s: layer %d (from %s), first eligible position %d",
             ctx.spec["name"], hook.layer, hook.source, hook.first_eligible_position)
    info = build_latent_cache(
        ctx.workdir, ctx.inputs["model"], ctx.inputs["sae"], ctx.inputs["tokens"], hook,
        ctx.params["model_dtype"], CacheSettings.from_env(), desc=ctx.spec["name"],
    )
    ctx.info.update(info)


def build_latent_cache(
    workdir: Path, model_dir: Path, sae_dir: Path, tokens_dir: Path, hook: Hookpoint,
    model_dtype: str, settings: CacheSettings, desc: str = "latents",
) -> dict[str, Any]:
    """All three phases into ``workdir``; returns the facts for meta.json."""
    t0 = time.perf_counter()
    enc = encode_tokens(workdir, model_dir, sae_dir, tokens_dir, hook, model_dtype, settings, desc)
    t1 = time.perf_counter()
    stats, n_entries = finish_cache(workdir, enc["n_latents"], enc["ctx_len"], hook.first_eligible_position, settings.sort_budget)
    (workdir / PROGRESS).unlink(missing_ok=True)
    t2 = time.perf_counter()
    fired = int((stats.fire_counts > 0).sum())
    if enc["values_clamped"]:
        log.warning("%s: %d activations exceeded the fp16 maximum and were clamped to %g",
                    desc, enc["values_clamped"], np.finfo(np.float16).max)
    arrays = [zarr_io.open_array(workdir / name) for name in (INDICES, VALUES)]
    return {
        **enc,
        "layer": hook.layer,
        "layer_source": hook.source,
        "first_eligible_position": hook.first_eligible_position,
        "acts_dtype": hook.acts_dtype,
        "n_entries": n_entries,
        "latents_fired": fired,
        "latents_never_fired": enc["n_latents"] - fired,
        "seconds_encode": round(t1 - t0, 2),
        "seconds_index": round(t2 - t1, 2),
        "stored_bytes": sum(a.nbytes_stored() for a in arrays),
    }


# --------------------------------------------------------------------------- phase 1


def _resume_point(workdir: Path, layout: dict[str, int]) -> tuple[int, int]:
    """(chunks done, fp16 clamps so far) of an earlier attempt with the same layout, else (0, 0)."""
    p = workdir / PROGRESS
    if not p.is_file() or not (workdir / INDICES).exists():
        return 0, 0
    progress = json.loads(p.read_text())
    if progress.get("layout") != layout:
        log.info("earlier attempt used %s, now %s: starting over", progress.get("layout"), layout)
        return 0, 0
    return int(progress["chunks_done"]), int(progress["values_clamped"])


def _mark_done(workdir: Path, chunks_done: int, layout: dict[str, int], clamped: int) -> None:
    tmp = workdir / (PROGRESS + ".tmp")
    tmp.write_text(json.dumps({"chunks_done": chunks_done, "layout": layout, "values_clamped": clamped}))
    os.replace(tmp, workdir / PROGRESS)


def encode_tokens(
    workdir: Path, model_dir: Path, sae_dir: Path, tokens_dir: Path, hook: Hookpoint,
    model_dtype: str, settings: CacheSettings, desc: str,
) -> dict[str, Any]:
    """Phase 1: forward to the SAE's layer, encode, write indices/values chunk by chunk."""
    from randsae.models.artifact import load_model_artifact
    from randsae.models.variants import control_row_seeds, control_seed
    from randsae.sae import TopKSAE
    from randsae.stages.activations import device

    t0 = time.perf_counter()
    dev = device()
    loaded = load_model_artifact(model_dir, dtype=zarr_io.torch_dtype(model_dtype), device=dev)
    sae = TopKSAE.load(sae_dir, device=dev)
    seconds_load = time.perf_counter() - t0
    if sae.d_model != loaded.model.config.hidden_size:
        raise ValueError(f"{sae_dir}: SAE width {sae.d_model} != model width {loaded.model.config.hidden_size}")
    tokens = zarr_io.open_array(Path(tokens_dir) / "tokens.zarr")
    n_seq, ctx_len = tokens.shape
    if n_seq * ctx_len >= 2**31:
        raise ValueError(f"{n_seq * ctx_len} tokens: the cache's int32 row ids allow fewer than 2**31")
    seqs_per_chunk = max(1, settings.chunk_tokens // ctx_len)
    layout = {"seqs_per_chunk": seqs_per_chunk}
    start, clamped = _resume_point(workdir, layout)
    attrs = {"ctx_len": ctx_len, "n_seq": n_seq, "n_latents": sae.n_latents, "layer": hook.layer,
             "first_eligible_position": hook.first_eligible_position, "hookpoint": "block_output"}
    if start:
        idx_arr, val_arr = (zarr_io.open_array(workdir / n, mode="r+") for n in (INDICES, VALUES))
        log.info("resuming at chunk %d", start)
    else:
        idx_arr, val_arr = create_cache_arrays(workdir, n_seq * ctx_len, sae.k, seqs_per_chunk * ctx_len, attrs)
    seed = loaded.info.get("seed") or 0
    n_chunks = -(-n_seq // seqs_per_chunk)
    with tqdm(total=n_seq * ctx_len, initial=start * seqs_per_chunk * ctx_len, unit="tok",
              unit_scale=True, desc=f"latents {desc}") as bar:
        for c in range(start, n_chunks):
            s0, s1 = c * seqs_per_chunk, min(n_seq, (c + 1) * seqs_per_chunk)
            parts = []
            for b0 in range(s0, s1, settings.batch_size):
                ids = torch.from_numpy(np.asarray(tokens[b0 : min(s1, b0 + settings.batch_size)])).long().to(dev)
                with control_seed(loaded.model, control_row_seeds(seed, b0, ids.shape[0])):
                    hidden = run_to_layers(loaded.model, ids, [hook.layer])[hook.layer]
                parts.append(encode_hidden(sae, hidden, hook.acts_dtype))
                bar.update(ids.numel())
            idx_arr[s0 * ctx_len : s1 * ctx_len] = np.concatenate([p[0] for p in parts])
            val_arr[s0 * ctx_len : s1 * ctx_len] = np.concatenate([p[1] for p in parts])
            clamped += sum(p[2] for p in parts)
            _mark_done(workdir, c + 1, layout, clamped)
    return {"n_rows": n_seq * ctx_len, "n_seq": n_seq, "ctx_len": ctx_len, "k": sae.k,
            "n_latents": sae.n_latents, "values_clamped": clamped, "device": str(dev),
            "seconds_load": round(seconds_load, 2)}
