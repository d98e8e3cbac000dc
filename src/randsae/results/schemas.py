"""Column types of the per-artifact files the database is built from.

These are the contracts of the producing stages, derived from their typed row schemas
(:class:`randsae.metrics.schema.SaeMetricsRow`, :class:`randsae.examples_schema.LatentRow`,
:mod:`randsae.autointerp.schema`, the Arrow schema :data:`randsae.sae.train_log.SCHEMA`), never
kept by hand. The database uses them as a template:
a table always has at least these columns with these types, even when no artifact has been
built yet (a query on a pipeline that has not reached a stage returns no rows rather than
failing), and a column a file lacks is NULL. Columns a file has beyond these are kept.
"""

from __future__ import annotations

import dataclasses

import pyarrow as pa

from randsae.autointerp.schema import ExplanationRow, ScoreRow, UsageRow
from randsae.examples_schema import LatentRow
from randsae.metrics.schema import SaeMetricsRow
from randsae.rows import duckdb_columns
from randsae.sae import train_log

_PY_TO_DUCKDB = {"str": "VARCHAR", "int": "BIGINT", "float": "DOUBLE", "bool": "BOOLEAN"}

#: Columns of the LLM files (explanations, scores, usage) renamed on the way in: their ``model``
#: is the LLM and would clash with the studied model's name. In other files an identifier-named
#: column (e.g. a ``model`` written by ``write_row(extra=...)``) is dropped instead.
RENAMES: dict[str, str] = {"model": "llm_model"}


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
LATENTS: dict[str, str] = duckdb_columns(LatentRow)

_ARROW_TO_DUCKDB = {pa.int64(): "BIGINT", pa.int32(): "INTEGER", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN",
                    pa.string(): "VARCHAR"}

#: sae/<key>/train_log.parquet (one row per ``log_every_steps`` steps), from the trainer's schema.
TRAIN_LOG: dict[str, str] = {f.name: _ARROW_TO_DUCKDB[f.type] for f in train_log.SCHEMA}

#: explain/<key>/explanations.parquet; the file's ``model`` (the LLM) becomes ``llm_model``.
EXPLANATIONS: dict[str, str] = duckdb_columns(ExplanationRow, renames=RENAMES)

#: score/<key>/scores.parquet (one row per judged example); ``scorer`` comes from the plan and
#: the file's ``model`` (the judge) becomes ``llm_model``.
SCORES: dict[str, str] = duckdb_columns(ScoreRow, renames=RENAMES, skip=("scorer",))

#: explain/<key>/usage.parquet and score/<key>/usage.parquet (one row per latent's LLM calls).
USAGE: dict[str, str] = duckdb_columns(UsageRow, renames=RENAMES)

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
