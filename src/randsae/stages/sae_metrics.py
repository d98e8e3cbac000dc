"""Stage ``sae_metrics``: one row of SAE quality metrics on the held-out eval split.

Runs the model over the eval tokens once per batch (prefix up to the hook layer computed
once, then clean / SAE-spliced / zero-ablated branches), accumulating fp64 sufficient
statistics, so the row does not depend on batching. Output: metrics.parquet (one row,
columns in docs/metrics.md) and firing_counts.parquet (per-latent eval firing counts).
"""

from __future__ import annotations

import json
import os

import torch
from tqdm import tqdm

from randsae import zarr_io
from randsae.stages import StageContext


def run(ctx: StageContext) -> None:
    from randsae.metrics.downstream import DownstreamStats, evaluate_batch
    from randsae.metrics.schema import build_row, write_firing_counts, write_row
    from randsae.metrics.stats import ReconstructionStats
    from randsae.models.artifact import load_model_artifact
    from randsae.models.variants import control_row_seeds, control_seed
    from randsae.sae.model import TopKSAE
    from randsae.stages.activations import device

    p = ctx.params
    dev = device()
    batch_size = int(os.environ.get("RANDSAE_METRICS_BATCH", "8"))
    loaded = load_model_artifact(ctx.inputs["model"], dtype=zarr_io.torch_dtype(p["model_dtype"]), device=dev)
    sae = TopKSAE.load(ctx.inputs["sae"], device=dev)
    tokens = zarr_io.open_array(ctx.inputs["tokens"] / "tokens.zarr")
    n_seq, ctx_len = tokens.shape
    if p["max_tokens"]:
        n_seq = max(1, min(n_seq, p["max_tokens"] // ctx_len))
    recon, downstream = ReconstructionStats(), DownstreamStats()
    artifact_seed = loaded.info.get("seed") or 0
    zero_cache: dict[tuple[int, ...], torch.Tensor] = {}  # zero-branch logits, once per length
    with torch.inference_mode(), tqdm(total=n_seq * ctx_len, unit="tok", unit_scale=True, desc=f"metrics {ctx.spec['name']}") as bar:
        for b0 in range(0, n_seq, batch_size):
            ids = torch.from_numpy(tokens[b0 : min(n_seq, b0 + batch_size)]).long().to(dev)
            with control_seed(loaded.model, control_row_seeds(artifact_seed, b0, ids.shape[0])):
                evaluate_batch(loaded.model, sae, ids, p["layer"], sae.n_latents, downstream, recon,
                               sae_dtype=torch.float32, skip_first_position=p["drop_first_position"],
                               zero_cache=zero_cache)
            bar.update(ids.numel())
    summary = json.loads((ctx.inputs["sae"] / "train_summary.json").read_text())
    cfg = json.loads((ctx.inputs["sae"] / "cfg.json").read_text())
    row = build_row(p["variant"], p["layer"], recon.result(), downstream.result(p["variant"]),
                    frac_dead_train=summary.get("dead_fraction"),
                    dead_window_tokens=(cfg.get("config") or {}).get("dead_window_tokens"))
    write_row(row, ctx.workdir / "metrics.parquet")
    write_firing_counts(recon.result().firing_counts, ctx.workdir / "firing_counts.parquet")
    ctx.info.update({"fvu": row.fvu, "ce_loss_score": row.ce_loss_score, "n_tokens": row.n_tokens})
