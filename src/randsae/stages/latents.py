"""Stage ``latents``: run the model and the SAE over the interp split and cache each token's
top-k latents (layout: :mod:`randsae.latents`, docs/latents.md).

The compute lives in :mod:`randsae.latents` (:func:`~randsae.latents.build_latent_cache`, over
the shared forward loop of :mod:`randsae.forward`), so importing this module stays cheap.

Inputs (roles): ``model`` (model artifact of the SAE's variant), ``sae`` (sae artifact:
sae.safetensors + cfg.json, loaded with ``randsae.sae.TopKSAE.load``), ``tokens`` (interp
split). The layer comes from :func:`randsae.latents.resolve_hookpoint`.

Phases:
1. encode: chunks of whole sequences, written in order; after each chunk ``progress.json``
   records how many are complete, so a killed job resumes from its last complete chunk. The
   control variant's noise is seeded per sequence (see docs/variants.md), as in every stage.
2. statistics: one pass over the finished cache (firing counts, max, sums).
3. index: counting sort by latent through bounded spill buckets (rebuilt if interrupted).

Execution settings (config ``execution.latents``, not in the key): ``batch_size`` (sequences
per forward, default 8), ``chunk_tokens`` (tokens per resumable chunk, default 65536),
``sort_budget`` (index entries sorted in memory at once, default 2**24), and ``execution.device``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from randsae.stage import Config, OutputFile, Planned, PlanSoFar, Resources, StageContext, StageDef
from randsae.stages.sae import per_sae

log = logging.getLogger("randsae")


def expand(cfg: Config, so_far: PlanSoFar) -> Iterator[Planned]:
    """Per SAE: its top-k latents over the interp split."""
    for sae, where, inputs in per_sae(cfg, so_far, "interp"):
        yield Planned(sae.name.removeprefix("sae/"), where, inputs, dict(sae.labels))


def run(ctx: StageContext) -> None:
    from randsae.latents import CacheSettings, build_latent_cache, resolve_hookpoint

    hook = resolve_hookpoint(ctx.inputs["sae"], ctx.store.root)
    log.info("%s: layer %d (from %s), first eligible position %d",
             ctx.spec["name"], hook.layer, hook.source, hook.first_eligible_position)
    info = build_latent_cache(
        ctx.workdir, ctx.inputs["model"], ctx.inputs["sae"], ctx.inputs["tokens"], hook,
        ctx.params["model_dtype"], CacheSettings.from_settings(ctx.settings), desc=ctx.spec["name"],
    )
    ctx.info.update(info)


STAGE = StageDef(
    name="latents",
    version=1,
    doc="each interp token's top-k SAE latents, with a by-latent index (docs/latents.md)",
    inputs={"model": "model", "sae": "sae", "tokens": "tokens"},
    expand=expand,
    resources=Resources(mem_mb=16000, runtime=240, gpus=1),
    outputs=(
        OutputFile("indices.zarr", "int32 [n_tokens, k] latent ids per token"),
        OutputFile("values.zarr", "float16 [n_tokens, k] their activations"),
        OutputFile("index/", "offsets.npy, rows.zarr, values.zarr: each latent's tokens, by latent"),
        OutputFile("fire_counts.npy", "per-latent statistics, with max_activation, sum_activation and sumsq_activation .npy"),
    ),
    run=run,
)
