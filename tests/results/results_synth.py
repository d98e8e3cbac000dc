"""A synthetic store for the results tests: real plan keys and meta.json, hand-made Parquet.

Planted effects (what the discriminability tests look for):

- token_entropy of sampled latents: trained ~ N(3, 0.3), every random variant ~ N(1, 0.3);
- token_lookup_share, frequency, max_activation, judge probabilities and the per-SAE metrics
  are drawn from the same distributions for every variant (nothing to find).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _helpers import tiny_config

from randsae.config import Config, normalise
from randsae.metrics.schema import SaeMetricsRow, write_row
from randsae.plan import Artifact, build_plan
from randsae.results.layout import SaeUnit, sae_units
from randsae.store import Store

N_LATENTS = 64  # tiny model: d_model 32, expansion 2
N_EXPLAINED = 6
N_BOOT = 300  # resampling settings of the shared synthetic database
N_PERM = 300
ALL_STAGES = ("model", "sae", "sae_metrics", "examples", "explain", "score")


def synth_config(tmp_path: Path, **over: Any) -> Config:
    base = {"variants": ["trained", "rerandomized", "control"], "models.tiny.layers": [0, 1], "sae.seeds": [0, 1]}
    return normalise(tiny_config(tmp_path / "model", tmp_path / "store", **{**base, **over}))


def _publish(store: Store, a: Artifact, files: dict[str, pa.Table | bytes | SaeMetricsRow]) -> None:
    with store.publish(a.spec()) as b:
        if b.done:
            return
        for name, content in files.items():
            if isinstance(content, bytes):
                (b.workdir / name).write_bytes(content)
            elif isinstance(content, SaeMetricsRow):
                write_row(content, b.workdir / name)
            else:
                pq.write_table(content, b.workdir / name)


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


def _latents(u: SaeUnit, rng: np.random.Generator) -> pa.Table:
    n_fires = rng.integers(0, 400, N_LATENTS)
    n_fires[:4] = 0  # a few dead latents
    sampled = n_fires > 0
    mean = 3.0 if u.variant == "trained" else 1.0
    entropy = np.where(sampled, rng.normal(mean, 0.3, N_LATENTS), np.nan)
    lookup = np.where(n_fires > 0, rng.uniform(0, 1, N_LATENTS), np.nan)
    top_share = rng.uniform(0.2, 1.0, N_LATENTS)
    return pa.table({
        "latent": pa.array(np.arange(N_LATENTS), pa.int32()),
        "n_fires": pa.array(n_fires, pa.int64()),
        "frequency": n_fires / 2048.0,
        "max_activation": pa.array(np.where(n_fires > 0, rng.gamma(2.0, 2.0, N_LATENTS), 0.0), pa.float32()),
        "n_windows": pa.array(n_fires // 2, pa.int64()),
        "token_entropy": entropy,
        "token_lookup_share": lookup,
        "top_token_id": pa.array(np.where(n_fires > 0, rng.integers(0, 400, N_LATENTS), -1), pa.int32()),
        "top_token_share": top_share,
        "single_token": top_share >= 0.9,
        "eligible": sampled,
        "sampled": sampled,
    })


def _explanations(u: SaeUnit, latents: list[int]) -> tuple[pa.Table, pa.Table]:
    ok = [i != 0 or u.seed != 0 for i in range(len(latents))]  # seed 0 loses its first explanation
    expl = pa.table({
        "latent": pa.array(latents, pa.int32()),
        "explanation": [f"the token 'x{lat}' in {u.variant} text" if k else "" for lat, k in zip(latents, ok, strict=True)],
        "ok": ok,
        "reason": [None if k else "parse: no Explanation line" for k in ok],
        "explainer": ["llm"] * len(latents),
        "client": ["local"] * len(latents),
        "model": ["smollm2-135m"] * len(latents),
        "input_tokens": [1200] * len(latents),
        "output_tokens": [30] * len(latents),
        "cache_read_tokens": [0] * len(latents),
        "cost_usd": [0.0] * len(latents),
    })
    usage = _usage("explain", latents, cost=0.0)
    return expl, usage


def _usage(stage: str, latents: list[int], cost: float) -> pa.Table:
    n = len(latents)
    return pa.table({
        "stage": [stage] * n, "latent": pa.array(latents, pa.int32()), "client": ["anthropic"] * n,
        "model": ["claude-sonnet-4-5"] * n, "input_tokens": [1500] * n, "output_tokens": [40] * n,
        "cache_read_tokens": [1000] * n, "cache_write_tokens": [0] * n, "cost_usd": [cost] * n,
        "cached": [i % 3 == 0 for i in range(n)],
    })


def _scores(scorer: str, latents: list[int], rng: np.random.Generator) -> pa.Table:
    rows: dict[str, list[Any]] = {c: [] for c in ("latent", "scorer", "explanation_source", "example_id", "activating",
                                                 "quantile", "probability", "prediction", "ok")}
    for lat in latents:
        for source in ("own", "control"):
            for ex in range(10):
                act = ex < 6
                if source == "own":
                    p = float(rng.beta(4, 2) if act else rng.beta(2, 4))
                else:
                    p = float(rng.uniform())
                failed = ex == 9 and lat == latents[0]
                rows["latent"].append(lat)
                rows["scorer"].append(scorer)
                rows["explanation_source"].append(source)
                rows["example_id"].append(ex)
                rows["activating"].append(act)
                rows["quantile"].append(ex if act else -1)
                rows["probability"].append(None if failed else p)
                rows["prediction"].append(False if failed else p > 0.5)
                rows["ok"].append(not failed)
    return pa.table({**rows, "latent": pa.array(rows["latent"], pa.int32()), "quantile": pa.array(rows["quantile"], pa.int32()),
                     "probability": pa.array(rows["probability"], pa.float64())})


def build_synthetic_store(cfg: Config, stages: tuple[str, ...] = ALL_STAGES, seed: int = 0) -> Store:
    """Publish the given stages' artifacts of every SAE of the plan into cfg['store']."""
    plan = build_plan(cfg)
    store = Store(cfg["store"])
    rng = np.random.default_rng(seed)
    if "model" in stages:
        for a in plan.stage("model"):
            _publish(store, a, {"config.json": b"{}"})
    for u in sae_units(plan):
        if "sae" in stages:
            _publish(store, u.sae, {"sae.safetensors": b"\0" * 64})
        if "sae_metrics" in stages:
            _publish(store, u.related["sae_metrics"], {"metrics.parquet": _metrics_row(u, rng)})
        lat = _latents(u, rng)
        if "examples" in stages:
            _publish(store, u.related["examples"], {"latents.parquet": lat, "examples.json": b"[]"})
        sampled = [int(x) for x in np.flatnonzero(lat.column("sampled").to_numpy(zero_copy_only=False))][:N_EXPLAINED]
        if "explain" in stages:
            expl, usage = _explanations(u, sampled)
            _publish(store, u.related["explain"], {"explanations.parquet": expl, "usage.parquet": usage})
        if "score" in stages:
            for scorer, a in u.scores.items():
                _publish(store, a, {"scores.parquet": _scores(scorer, sampled, rng),
                                    "usage.parquet": _usage(scorer, sampled * 4, cost=0.002)})
    return store
