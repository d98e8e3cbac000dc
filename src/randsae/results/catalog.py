"""What each table and view of results.duckdb holds, in one place.

Stored in the database itself (``COMMENT ON``, visible through ``duckdb_tables()`` and
``duckdb_views()``) so a user exploring the file sees the same sentence as docs/results.md,
which a test keeps in step with this dict.
"""

from __future__ import annotations

from randsae.sae.convergence import CONVERGED_BELOW, LAST_FRACTION

TABLES: dict[str, str] = {
    "runs": "one row per database build: when, code version, config, resampling settings",
    "artifacts": "every artifact of the config's plan that exists in the store, from its meta.json",
    "progress": "per stage: artifacts the plan needs and how many are built",
    "saes": "one row per SAE of the plan (built or not): identifiers, related artifact keys, SAE settings",
    "sae_metrics": "one row per measured SAE: reconstruction, sparsity and downstream (CE/KL) metrics",
    "latents": "one row per latent of each SAE with examples: firing statistics and abstractness",
    "explanations": "one row per explained latent: the LLM's explanation, success, tokens, cost",
    "scores": "one row per judged example: label, judge probability and prediction",
    "llm_usage": "one row per LLM call of the explain and score stages: tokens, cost, cache hits",
    "train_log": "one row per training-log row of each built SAE: step, tokens, loss, FVU, dead fraction, L0, learning rate",
    "convergence": f"one row per SAE with a training log: what its last {LAST_FRACTION:.0%} of steps gained in "
                   f"training FVU, and whether that is under {CONVERGED_BELOW:g}",
    "auroc": "per SAE, scorer and explanation source: pooled AUROC with cluster-bootstrap CI, threshold metrics",
    "latent_auroc": "per latent, scorer and explanation source: AUROC and threshold metrics",
    "discriminability": "per model, layer, setting, metric and random variant: how well the metric separates trained from the variant",
    "findings": "one row per claim of the paper: the statistic tested on this run's data, its CI and the computed verdict",
}

VIEWS: dict[str, str] = {
    "sae_metric_values": "long form of every per-SAE number: sae_metrics columns, pooled AUROCs, latent means",
    "variant_vs_trained": "every variant's per-SAE metric beside trained's (same model, layer, setting, seed)",
    "observations": "the samples discriminability compares: per-SAE values (level sae) and per-latent values (level latent)",
    "headline": "one row per metric, one column per random variant: effect on the metric with its CI and a mark where it separates",
}
