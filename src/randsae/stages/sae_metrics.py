"""Stage ``sae_metrics``: one row of SAE quality metrics on the held-out eval split.

Runs the model over the eval tokens once per batch (prefix up to the hook layer computed
once, then clean / SAE-spliced / zero-ablated branches) inside the shared forward loop
(:func:`randsae.forward.token_batches`: batching and per-sequence control noise),
accumulating fp64 sufficient statistics, so the row does not depend on batching. With
``drop_first_position`` position 0 is left out of every statistic and keeps its clean hidden
state in both replaced branches (docs/metrics.md). Output: metrics.parquet (one row,
columns in docs/metrics.md) and firing_counts.parquet (per-latent eval firing counts).

One job per (model variant, eval tokens, layer, model dtype, position-0 rule, token budget):
every SAE of that hookpoint (seeds, expansions, k) is measured in the same pass, so the
model load, the prefix, the clean and the zero branch are paid once and each SAE adds only
its own spliced branch (:func:`randsae.metrics.downstream.evaluate_batch_group`). Each SAE's
row is bit for bit the row of a job measuring it alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from randsae.stage import (
    Artifact,
    Config,
    OutputFile,
    Planned,
    PlanSoFar,
    Resources,
    StageContext,
    StageDef,
)
from randsae.stages.sae import per_sae


def expand(cfg: Config, so_far: PlanSoFar) -> Iterator[Planned]:
    """Per SAE: one metrics row on the eval split."""
    for sae, where, inputs in per_sae(cfg, so_far, "eval"):
        params = {**where, "max_tokens": cfg["metrics"]["max_tokens"], "variant": sae.labels["variant"]}
        yield Planned(sae.name.removeprefix("sae/"), params, inputs, dict(sae.labels))


def group(a: Artifact) -> str:
    """Everything but the SAE: the model variant, the eval tokens and the params (layer,
    model dtype, position-0 rule, token budget, variant). Artifacts with equal ids read the
    same hookpoint over the same tokens, so they share one pass."""
    params = json.dumps(a.params, sort_keys=True, separators=(",", ":"))
    return f"{a.inputs['model']}-{a.inputs['tokens']}-{params}"


def _check_one_hookpoint(ctxs: list[StageContext]) -> None:
    """A group must share everything but the SAE (what :func:`group` keys on)."""
    first = ctxs[0]
    for c in ctxs[1:]:
        for what, mine, theirs in (("params", c.params, first.params),
                                   ("model", c.inputs["model"], first.inputs["model"]),
                                   ("tokens", c.inputs["tokens"], first.inputs["tokens"])):
            if mine != theirs:
                raise ValueError(f"sae_metrics: {c.name} and {first.name} differ in {what} "
                                 f"({mine} vs {theirs}); only SAEs of one hookpoint share a job")


def run_group(ctxs: list[StageContext]) -> None:
    """Every SAE among ``ctxs`` (one hookpoint, see :func:`group`) in one pass over the eval
    tokens: per batch the prefix, the clean and the zero branch once, then each SAE's own
    encode/decode, spliced branch and statistics."""
    import torch

    from randsae import forward
    from randsae.devices import resolve_device
    from randsae.metrics.downstream import DownstreamStats, SaeEval, evaluate_batch_group
    from randsae.metrics.schema import build_row, write_firing_counts, write_row
    from randsae.metrics.stats import ReconstructionStats
    from randsae.models.artifact import load_model_artifact
    from randsae.sae.model import TopKSAE
    from randsae.zarr_io import torch_dtype

    _check_one_hookpoint(ctxs)
    first = ctxs[0]
    p, settings = first.params, first.settings
    dev = resolve_device(settings.get("device", "auto"))
    batch_size = int(settings.get("batch_size", 8))
    loaded = load_model_artifact(first.inputs["model"], dtype=torch_dtype(p["model_dtype"]), device=dev)
    evals = []
    for c in ctxs:
        sae = TopKSAE.load(c.inputs["sae"], device=dev)
        evals.append(SaeEval(sae, sae.n_latents, DownstreamStats(), ReconstructionStats()))
    tokens = forward.open_tokens(first.inputs["tokens"])
    n_seq, ctx_len = tokens.shape
    if p["max_tokens"]:
        n_seq = max(1, min(n_seq, p["max_tokens"] // ctx_len))
    # Zero-branch logits once per length; only without drop_first_position (with it the zero
    # branch keeps each sequence's clean position 0, as the SAE branch does, so it is per sequence).
    zero_cache: dict[tuple[int, ...], torch.Tensor] = {}
    label = f"metrics {first.name}" + (f" and {len(ctxs) - 1} more SAEs" if len(ctxs) > 1 else "")
    # The split forward (prefix once, then clean / zero / per-SAE branches) runs inside the
    # shared loop, so each batch's control noise is that of its sequences, as in every stage.
    with torch.inference_mode():
        for batch in forward.token_batches(loaded, tokens, range(n_seq), batch_size, dev, label):
            evaluate_batch_group(loaded.model, evals, batch.input_ids, p["layer"], sae_dtype=torch.float32,
                                 skip_first_position=p["drop_first_position"], zero_cache=zero_cache)
    for c, one in zip(ctxs, evals, strict=True):
        assert one.recon is not None
        recon = one.recon.result()
        summary = json.loads((c.inputs["sae"] / "train_summary.json").read_text())
        cfg = json.loads((c.inputs["sae"] / "cfg.json").read_text())
        row = build_row(p["variant"], p["layer"], recon, one.downstream.result(p["variant"]),
                        frac_dead_train=summary.get("dead_fraction"),
                        dead_window_tokens=(cfg.get("config") or {}).get("dead_window_tokens"))
        write_row(row, c.workdir / "metrics.parquet")
        write_firing_counts(recon.firing_counts, c.workdir / "firing_counts.parquet")
        c.info.update({"fvu": row.fvu, "ce_loss_score": row.ce_loss_score, "n_tokens": row.n_tokens,
                       "saes_in_job": len(ctxs)})


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
    run_group=run_group,
    group=group,
)
