"""Column types of the per-artifact files the database is built from.

These are the contracts of the producing stages (docs/metrics.md, docs/latents.md,
docs/autointerp.md). The database uses them as a template: a table always has at least these
columns with these types, even when no artifact has been built yet (a query on a pipeline
that has not reached a stage returns no rows rather than failing), and a column a file lacks
is NULL. Columns a file has beyond these are kept.
"""

from __future__ import annotations

import dataclasses

from randsae.metrics.schema import SaeMetricsRow

_PY_TO_DUCKDB = {"str": "VARCHAR", "int": "BIGINT", "float": "DOUBLE", "bool": "BOOLEAN"}


def _sae_metrics_columns() -> dict[str, str]:
    out = {}
    for f in dataclasses.fields(SaeMetricsRow):
        if f.name in ("variant", "layer"):  # identifiers come from the plan
            continue
        out[f.name] = _PY_TO_DUCKDB[str(f.type).replace(" | None", "").strip()]
    return out


#: sae_metrics/<key>/metrics.parquet (one row), without variant/layer.
SAE_METRICS: dict[str, str] = _sae_metrics_columns()

#: examples/<key>/latents.parquet (one row per latent).
LATENTS: dict[str, str] = {
    "latent": "INTEGER",
    "n_fires": "BIGINT",
    "frequency": "DOUBLE",
    "max_activation": "FLOAT",
    "n_windows": "BIGINT",
    "token_entropy": "DOUBLE",
    "token_lookup_share": "DOUBLE",
    "top_token_id": "INTEGER",
    "top_token_share": "DOUBLE",
    "single_token": "BOOLEAN",
    "eligible": "BOOLEAN",
    "sampled": "BOOLEAN",
}

#: explain/<key>/explanations.parquet; the file's ``model`` (the LLM) becomes ``llm_model``.
EXPLANATIONS: dict[str, str] = {
    "latent": "INTEGER",
    "explanation": "VARCHAR",
    "ok": "BOOLEAN",
    "reason": "VARCHAR",
    "explainer": "VARCHAR",
    "client": "VARCHAR",
    "llm_model": "VARCHAR",
    "input_tokens": "BIGINT",
    "output_tokens": "BIGINT",
    "cache_read_tokens": "BIGINT",
    "cost_usd": "DOUBLE",
}

#: score/<key>/scores.parquet (one row per judged example); ``scorer`` comes from the plan.
SCORES: dict[str, str] = {
    "latent": "INTEGER",
    "explanation_source": "VARCHAR",
    "example_id": "BIGINT",
    "activating": "BOOLEAN",
    "quantile": "INTEGER",
    "probability": "DOUBLE",
    "prediction": "BOOLEAN",
    "ok": "BOOLEAN",
}

#: explain/<key>/usage.parquet and score/<key>/usage.parquet (one row per LLM call).
USAGE: dict[str, str] = {
    "stage": "VARCHAR",
    "latent": "INTEGER",
    "client": "VARCHAR",
    "llm_model": "VARCHAR",
    "input_tokens": "BIGINT",
    "output_tokens": "BIGINT",
    "cache_read_tokens": "BIGINT",
    "cache_write_tokens": "BIGINT",
    "cost_usd": "DOUBLE",
    "cached": "BOOLEAN",
}

#: Columns of the LLM files (explanations, usage) renamed on the way in: their ``model`` is the
#: LLM and would clash with the studied model's name. In other files an identifier-named
#: column (e.g. a ``model`` written by ``write_row(extra=...)``) is dropped instead.
RENAMES: dict[str, str] = {"model": "llm_model"}

#: The sae_metrics columns that are metrics (compared between variants); the rest are counts,
#: settings and flags.
SAE_METRIC_NAMES: tuple[str, ...] = (
    "fvu",
    "explained_variance",
    "mse",
    "cossim",
    "l2_norm_in",
    "l2_norm_out",
    "l2_ratio",
    "relative_reconstruction_bias",
    "l0",
    "l1",
    "frac_alive",
    "frac_ultra_sparse_1e5",
    "frac_ultra_sparse_1e6",
    "freq_over_1_percent",
    "freq_over_10_percent",
    "frac_dead_train",
    "ce_clean",
    "ce_sae",
    "ce_zero",
    "delta_ce",
    "ce_loss_score",
    "kl_sae",
    "kl_zero",
    "kl_score",
)
