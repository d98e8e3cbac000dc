"""Stage ``latents``: run the model and the SAE over the interp split and cache each token's
top-k latents (layout: :mod:`randsae.latents`, docs/latents.md).

The compute lives in :mod:`randsae.latents` (:func:`~randsae.latents.build_latent_caches`, over
the shared forward loop of :mod:`randsae.forward`), so importing this module stays cheap. One
job per (model variant, interp split) builds the caches of all its SAEs from one forward pass.

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

from randsae.stage import (
    Config,
    OutputFile,
    Planned,
    PlanSoFar,
    Resources,
    StageContext,
    StageDef,
    group_by_inputs,
)
from randsae.stages.sae import per_sae

log = logging.getLogger("randsae")


def expand(cfg: Config, so_far: PlanSoFar) -> Iterator[Planned]:
    """Per SAE: its top-k latents over the interp split."""
    for sae, where, inputs in per_sae(cfg, so_far, "interp"):
        yield Planned(sae.name.removeprefix("sae/"), where, inputs, dict(sae.labels))


def run_group(ctxs: list[StageContext]) -> None:
    """Every SAE among ``ctxs`` (one model variant, one interp split): one forward pass to the
    deepest of their layers, each SAE encoding its own layer's rows (each cache byte for byte
    that of a job building it alone)."""
    from randsae.latents import CacheSettings, CacheTarget, build_latent_caches, resolve_hookpoint

    first = ctxs[0]
    dtypes = {c.params["model_dtype"] for c in ctxs}
    if len(dtypes) > 1 or any(c.inputs["model"] != first.inputs["model"] or c.inputs["tokens"] != first.inputs["tokens"]
                              for c in ctxs):
        raise ValueError(f"latents: {first.name} and others differ in model, tokens or model dtype; "
                         "only SAEs of one model variant and one interp split share a job")
    targets = []
    for c in ctxs:
        hook = resolve_hookpoint(c.inputs["sae"], c.store.root)
        log.info("%s: layer %d (from %s), first eligible position %d",
                 c.name, hook.layer, hook.source, hook.first_eligible_position)
        targets.append(CacheTarget(c.workdir, c.inputs["sae"], hook, c.name))
    infos = build_latent_caches(targets, first.inputs["model"], first.inputs["tokens"], dtypes.pop(),
                                CacheSettings.from_settings(first.settings))
    for c, info in zip(ctxs, infos, strict=True):
        c.info.update(info)


#: One job per (model variant, interp tokens): every SAE of that variant, all layers and seeds.
group = group_by_inputs("model", "tokens")


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
    run_group=run_group,
    group=group,
)
