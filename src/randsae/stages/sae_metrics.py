"""Stage ``sae_metrics``: one row of SAE quality metrics on the held-out eval split.

Runs the model over the eval tokens once per batch (prefix up to the hook layer computed
once, then clean / SAE-spliced / zero-ablated branches) inside the shared forward loop
(:func:`randsae.forward.token_batches`: batching and per-sequence control noise),
accumulating fp64 sufficient statistics, so the row does not depend on batching. With
``drop_first_position`` position 0 is left out of every statistic and keeps its clean hidden
state in both replaced branches (docs/metrics.md). Output: metrics.parquet (one row,
columns in docs/metrics.md) and firing_counts.parquet (per-latent eval firing counts).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from randsae.stage import Config, OutputFile, Planned, PlanSoFar, Resources, StageContext, StageDef
from randsae.stages.sae import per_sae


def expand(cfg: Config, so_far: PlanSoFar) -> Iterator[Planned]:
    """Per SAE: one metrics row on the eval split."""
    for sae, where, inputs in per_sae(cfg, so_far, "eval"):
        params = {**where, "max_tokens": cfg["metrics"]["max_tokens"], "variant": sae.labels["variant"]}
        yield Planned(sae.name.removeprefix("sae/"), params, inputs, dict(sae.labels))


def run(ctx: StageContext) -> None:
    import torch

    from randsae import forward
    from randsae.devices import resolve_device
    from randsae.metrics.downstream import DownstreamStats, evaluate_batch
    from randsae.metrics.schema import build_row, write_firing_counts, write_row
    from randsae.metrics.stats import ReconstructionStats
    from randsae.models.artifact import load_model_artifact
    from randsae.sae.model import TopKSAE
    from randsae.zarr_io import torch_dtype

    p = ctx.params
    dev = resolve_device(ctx.settings.get("device", "auto"))
    batch_size = int(ctx.settings.get("batch_size", 8))
    loaded = load_model_artifact(ctx.inputs["model"], dtype=torch_dtype(p["model_dtype"]), device=dev)
    sae = TopKSAE.load(ctx.inputs["sae"], device=dev)
    tokens = forward.open_tokens(ctx.inputs["tokens"])
    n_seq, ctx_len = tokens.shape
    if p["max_tokens"]:
        n_seq = max(1, min(n_seq, p["max_tokens"] // ctx_len))
    recon, downstream = ReconstructionStats(), DownstreamStats()
    # Zero-branch logits once per length; only without drop_first_position (with it the zero
    # branch keeps each sequence's clean position 0, as the SAE branch does, so it is per sequence).
    zero_cache: dict[tuple[int, ...], torch.Tensor] = {}
    # The split forward (prefix once, then clean / SAE / zero branches) runs inside the shared
    # loop, so each batch's control noise is that of its sequences, as in every stage.
    with torch.inference_mode():
        for batch in forward.token_batches(loaded, tokens, range(n_seq), batch_size, dev, f"metrics {ctx.spec['name']}"):
            evaluate_batch(loaded.model, sae, batch.input_ids, p["layer"], sae.n_latents, downstream, recon,
                           sae_dtype=torch.float32, skip_first_position=p["drop_first_position"],
                           zero_cache=zero_cache)
    summary = json.loads((ctx.inputs["sae"] / "train_summary.json").read_text())
    cfg = json.loads((ctx.inputs["sae"] / "cfg.json").read_text())
    row = build_row(p["variant"], p["layer"], recon.result(), downstream.result(p["variant"]),
                    frac_dead_train=summary.get("dead_fraction"),
                    dead_window_tokens=(cfg.get("config") or {}).get("dead_window_tokens"))
    write_row(row, ctx.workdir / "metrics.parquet")
    write_firing_counts(recon.result().firing_counts, ctx.workdir / "firing_counts.parquet")
    ctx.info.update({"fvu": row.fvu, "ce_loss_score": row.ce_loss_score, "n_tokens": row.n_tokens})


STAGE = StageDef(
    name="sae_metrics",
    # 2: the zero-ablation branch keeps position 0 clean when the SAE branch does
    # (drop_first_position), so CE_zero and the CE/KL scores compare like with like
    version=2,
    doc="reconstruction and downstream (CE/KL) metrics of one SAE on the eval split",
    inputs={"model": "model", "sae": "sae", "tokens": "tokens"},
    expand=expand,
    resources=Resources(mem_mb=16000, runtime=120, gpus=1),
    outputs=(
        OutputFile("metrics.parquet", "one row of SAE metrics", "randsae.metrics.schema:SaeMetricsRow"),
        OutputFile("firing_counts.parquet", "per-latent firing counts on the eval split"),
    ),
    run=run,
)
