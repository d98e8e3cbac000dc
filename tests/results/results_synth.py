"""A synthetic store for the results tests: real plan keys and meta.json, and Parquet files
with planted effects written through the producing stages' own row schemas
(:class:`randsae.examples_schema.LatentRow`, :mod:`randsae.autointerp.schema`,
:class:`randsae.metrics.schema.SaeMetricsRow`), so they cannot drift from what the stages write.

Planted effects (what the discriminability tests look for):

- token_entropy of sampled latents: trained ~ N(3, 0.3), every random variant ~ N(1, 0.3);
- token_lookup_share, frequency, max_activation, judge probabilities and the per-SAE metrics
  are drawn from the same distributions for every variant (nothing to find);
- training logs (sae/<key>/train_log.parquet, through the trainer's own writer): FVU decays
  exponentially to a floor and is flat by 80% of the steps, except for one SAE
  (:data:`UNCONVERGED`), whose FVU still falls steadily at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from _helpers import tiny_config

from randsae.autointerp.schema import ExplanationRow, ScoreRow, UsageRow
from randsae.config import Config, normalise
from randsae.examples_schema import LatentRow
from randsae.metrics.schema import SaeMetricsRow, write_row
from randsae.plan import Artifact, build_plan
from randsae.results.layout import SaeUnit, sae_units
from randsae.rows import table_from_columns, table_from_rows, write_table
from randsae.sae.train_log import LOG_FILE, write_log
from randsae.store import Store

N_LATENTS = 64  # tiny model: d_model 32, expansion 2
N_EXPLAINED = 6
N_BOOT = 300  # resampling settings of the shared synthetic database
N_PERM = 300
ALL_STAGES = ("model", "sae", "sae_metrics", "examples", "explain", "score")


def synth_config(tmp_path: Path, **over: Any) -> Config:
    base = {"variants": ["trained", "rerandomized", "control"], "models.tiny.layers": [0, 1], "sae.seeds": [0, 1]}
    return normalise(tiny_config(tmp_path / "model", tmp_path / "store", **{**base, **over}))


#: Training-log shape: rows every LOG_EVERY steps and a partial last row at TRAIN_STEPS.
LOG_EVERY = 10
TRAIN_STEPS = 325
#: (variant, layer, seed) of the one SAE whose training log has not flattened out.
UNCONVERGED = ("control", 1, 1)

#: A file's content: raw bytes, one metrics row, (row schema, typed table of such rows), or
#: training-log rows.
Content = bytes | SaeMetricsRow | tuple[type, pa.Table] | list[dict[str, Any]]


def _publish(store: Store, a: Artifact, files: dict[str, Content]) -> None:
    with store.publish(a.spec()) as b:
        if b.done:
            return
        for name, content in files.items():
            if isinstance(content, bytes):
                (b.workdir / name).write_bytes(content)
            elif isinstance(content, SaeMetricsRow):
                write_row(content, b.workdir / name)
            elif isinstance(content, list):
                write_log(b.workdir / name, content)
            else:
                write_table(*content, b.workdir / name)


def _metrics_row(u: SaeUnit, rng: np.random.Generator) -> SaeMetricsRow:
    fvu = float(rng.uniform(0.15, 0.25))
    ce_clean, ce_zero = 4.0 + rng.normal(0, 0.05), 9.0
    ce_sae = ce_clean + rng.uniform(0.2, 0.4)
    return SaeMetricsRow(
        variant=u.variant, layer=u.layer, n_tokens=2048, d_model=32, n_latents=N_LATENTS, fvu=fvu,
        explained_variance=1 - fvu, mse=fvu * 0.5, cossim=float(rng.uniform(0.88, 0.92)), l2_norm_in=5.0,
        l2_norm_out=4.6, l2_ratio=0.92, relative_reconstruction_bias=0.97, l0=4.0, l1=float(rng.uniform(8, 9)),
        frac_alive=float(rng.uniform(0.8, 0.95)), frac_ultra_sparse_1e5=float("nan"), frac_ultra_sparse_1e6=float("nan"),
        freq_over_1_percent=0.5, freq_over_10_percent=0.05, frac_dead_train=0.05, dead_window_tokens=10_000_000,
        ce_n_tokens=2000, ce_clean=ce_clean, ce_sae=ce_sae, ce_zero=ce_zero, delta_ce=ce_sae - ce_clean,
        ce_loss_score=(ce_zero - ce_sae) / (ce_zero - ce_clean), kl_sae=0.3, kl_zero=5.0, kl_score=0.94,
        ce_score_unstable=False, kl_score_unstable=False, ce_score_meaningful=u.variant == "trained",
    )


def _train_log(u: SaeUnit, rng: np.random.Generator, train_steps: int = TRAIN_STEPS) -> list[dict[str, Any]]:
    """FVU = floor + 0.8 exp(-step / tau) + row noise: tau is 12% of the run (flat by 80%),
    or 120% of it for the UNCONVERGED SAE (still falling: its last 20% gains ~0.06 FVU)."""
    floor = {"trained": 0.2}.get(u.variant, 0.35)
    tau = train_steps * (1.2 if (u.variant, u.layer, u.seed) == UNCONVERGED else 0.12)
    steps = [*range(LOG_EVERY, train_steps, LOG_EVERY), train_steps]
    rows = []
    for s in steps:
        fvu = floor + 0.8 * np.exp(-s / tau) + rng.normal(0, 0.001)
        rows.append({"step": s, "tokens": 256 * s, "loss": 0.5 * fvu, "fvu": float(fvu), "auxk_loss": 0.01,
                     "dead_fraction": 0.05, "l0": 4.0, "lr": 1e-3 * (1 - s / train_steps)})
    return rows


#: Mean token entropy of a variant's sampled latents at a layer (the planted effect).
EntropyMean = Callable[[str, int], float]


def planted_entropy(variant: str, layer: int) -> float:
    return 3.0 if variant == "trained" else 1.0


def _latents(u: SaeUnit, rng: np.random.Generator, entropy_mean: EntropyMean = planted_entropy) -> pa.Table:
    n_fires = rng.integers(0, 400, N_LATENTS)
    n_fires[:4] = 0  # a few dead latents
    sampled = n_fires > 0
    mean = entropy_mean(u.variant, u.layer)
    entropy = np.where(sampled, rng.normal(mean, 0.3, N_LATENTS), np.nan)
    lookup = np.where(n_fires > 0, rng.uniform(0, 1, N_LATENTS), np.nan)
    top_share = rng.uniform(0.2, 1.0, N_LATENTS)
    return table_from_columns(LatentRow, {
        "latent": np.arange(N_LATENTS),
        "n_fires": n_fires,
        "frequency": n_fires / 2048.0,
        "max_activation": np.where(n_fires > 0, rng.gamma(2.0, 2.0, N_LATENTS), 0.0),
        "n_windows": n_fires // 2,
        "token_entropy": entropy,
        "token_lookup_share": lookup,
        "top_token_id": np.where(n_fires > 0, rng.integers(0, 400, N_LATENTS), -1),
        "top_token_share": top_share,
        "single_token": top_share >= 0.9,
        "eligible": sampled,
        "sampled": sampled,
    })


def _explanations(u: SaeUnit, latents: list[int]) -> tuple[pa.Table, pa.Table]:
    ok = [i != 0 or u.seed != 0 for i in range(len(latents))]  # seed 0 loses its first explanation
    expl = table_from_rows(ExplanationRow, [
        ExplanationRow(latent=lat, explanation=f"the token 'x{lat}' in {u.variant} text" if k else "", ok=k,
                       reason="" if k else "parse: no Explanation line", explainer="llm", client="local",
                       model="smollm2-135m", input_tokens=1200, output_tokens=30, cache_read_tokens=0, cost_usd=0.0)
        for lat, k in zip(latents, ok, strict=True)
    ])
    usage = _usage("explain", latents, cost=0.0)
    return expl, usage


def _usage(stage: str, latents: list[int], cost: float) -> pa.Table:
    return table_from_rows(UsageRow, [
        UsageRow(stage=stage, latent=lat, client="anthropic", model="claude-sonnet-4-5", input_tokens=1500,
                 output_tokens=40, cache_read_tokens=1000, cache_write_tokens=0, cost_usd=cost, cached=i % 3 == 0)
        for i, lat in enumerate(latents)
    ])


def _scores(scorer: str, latents: list[int], rng: np.random.Generator) -> pa.Table:
    rows: list[ScoreRow] = []
    for j, lat in enumerate(latents):
        for source in ("own", "control"):
            for ex in range(10):
                act = ex < 6
                if source == "own":
                    p = float(rng.beta(4, 2) if act else rng.beta(2, 4))
                else:
                    p = float(rng.uniform())
                failed = ex == 9 and lat == latents[0]
                rows.append(ScoreRow(
                    latent=lat, scorer=scorer, explanation_source=source,
                    explanation_latent=lat if source == "own" else latents[(j + 1) % len(latents)],
                    example_id=ex, activating=act, quantile=ex if act else -1, probability=None if failed else p,
                    prediction=False if failed else p > 0.5, ok=not failed,
                    reason="api: timeout" if failed else "", client="local", model="smollm2-135m",
                ))
    return table_from_rows(ScoreRow, rows)


def build_synthetic_store(cfg: Config, stages: tuple[str, ...] = ALL_STAGES, seed: int = 0,
                          entropy_mean: EntropyMean = planted_entropy, train_steps: int = TRAIN_STEPS) -> Store:
    """Publish the given stages' artifacts of every SAE of the plan into cfg['store'];
    ``entropy_mean(variant, layer)`` plants the token entropy (default: trained 3, others 1);
    ``train_steps`` is the training logs' last step (rows every LOG_EVERY steps)."""
    plan = build_plan(cfg)
    store = Store(cfg["store"])
    rng = np.random.default_rng(seed)
    log_rng = np.random.default_rng([seed, 1])  # its own stream: the other files' draws stay as they were
    if "model" in stages:
        for a in plan.stage("model"):
            _publish(store, a, {"config.json": b"{}"})
    for u in sae_units(plan):
        if "sae" in stages:
            _publish(store, u.sae, {"sae.safetensors": b"\0" * 64, LOG_FILE: _train_log(u, log_rng, train_steps)})
        if "sae_metrics" in stages:
            _publish(store, u.related["sae_metrics"], {"metrics.parquet": _metrics_row(u, rng)})
        lat = _latents(u, rng, entropy_mean)
        if "examples" in stages:
            _publish(store, u.related["examples"], {"latents.parquet": (LatentRow, lat), "examples.json": b"[]"})
        sampled = [int(x) for x in np.flatnonzero(lat.column("sampled").to_numpy(zero_copy_only=False))][:N_EXPLAINED]
        if "explain" in stages:
            expl, usage = _explanations(u, sampled)
            _publish(store, u.related["explain"], {"explanations.parquet": (ExplanationRow, expl),
                                                   "usage.parquet": (UsageRow, usage)})
        if "score" in stages:
            for scorer, a in u.scores.items():
                _publish(store, a, {"scores.parquet": (ScoreRow, _scores(scorer, sampled, rng)),
                                    "usage.parquet": (UsageRow, _usage("score", sampled * 4, cost=0.002))})
    return store
