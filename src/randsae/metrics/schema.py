"""The sae_metrics output row: one typed record per SAE, written as a one-row Parquet file.

Why a fixed schema: the aggregate stage concatenates thousands of these files into DuckDB, and
the discriminability table compares every metric column between variants. A dataclass with
explicit Arrow types keeps every file's schema identical (a metric that is NaN or missing in one
run must not turn a column into a different type), and ``COLUMN_DOCS`` is the single place the
column meanings live (docs/metrics.md repeats them for readers; a test keeps the two in step).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from randsae.metrics.downstream import CE_SCORE_MEANINGFUL_VARIANTS, DownstreamResult
from randsae.metrics.stats import ReconstructionResult
from randsae.rows import write_parquet_atomic

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class SaeMetricsRow:
    """Every scalar metric of one SAE. Downstream and training-time columns may be None."""

    variant: str
    layer: int
    # reconstruction (stats.ReconstructionResult)
    n_tokens: int
    d_model: int
    n_latents: int
    fvu: float
    explained_variance: float
    mse: float
    cossim: float
    l2_norm_in: float
    l2_norm_out: float
    l2_ratio: float
    relative_reconstruction_bias: float
    l0: float
    l1: float
    frac_alive: float
    frac_ultra_sparse_1e5: float
    frac_ultra_sparse_1e6: float
    freq_over_1_percent: float
    freq_over_10_percent: float
    # training-time dead latents
    frac_dead_train: float | None
    dead_window_tokens: int | None
    # downstream (downstream.DownstreamResult)
    ce_n_tokens: int | None
    ce_clean: float | None
    ce_sae: float | None
    ce_zero: float | None
    delta_ce: float | None
    ce_loss_score: float | None
    kl_sae: float | None
    kl_zero: float | None
    kl_score: float | None
    ce_score_unstable: bool | None
    kl_score_unstable: bool | None
    ce_score_meaningful: bool
    schema_version: int = SCHEMA_VERSION


COLUMN_DOCS: dict[str, str] = {
    "variant": "model variant (trained, step0, rerandomized, rerandomized_no_embed, control)",
    "layer": "hookpoint: output of transformer block `layer` (0-based)",
    "n_tokens": "eval tokens in the reconstruction metrics",
    "d_model": "width of the hookpoint",
    "n_latents": "SAE dictionary size",
    "fvu": "sum_t ||x_t - x_hat_t||^2 / sum_t ||x_t - mean||^2, mean per dimension over the whole eval set",
    "explained_variance": "1 - fvu",
    "mse": "sum_t ||x_t - x_hat_t||^2 / (n_tokens * d_model) (per element)",
    "cossim": "mean over tokens of cos(x_t, x_hat_t); a token with a zero-norm x or x_hat counts 0",
    "l2_norm_in": "mean over tokens of ||x_t||",
    "l2_norm_out": "mean over tokens of ||x_hat_t||",
    "l2_ratio": "mean over tokens with ||x_t|| > 0 of ||x_hat_t|| / ||x_t||",
    "relative_reconstruction_bias": "sum_t ||x_hat_t||^2 / sum_t <x_t, x_hat_t> (1 = no shrinkage)",
    "l0": "mean over tokens of the number of firing latents (value != 0)",
    "l1": "mean over tokens of sum |value| over the token's latents",
    "frac_alive": "fraction of latents that fire on at least one eval token",
    "frac_ultra_sparse_1e5": "fraction of latents with 0 < eval firing frequency < 1e-5 (NaN if n_tokens <= 1e5)",
    "frac_ultra_sparse_1e6": "fraction of latents with 0 < eval firing frequency < 1e-6 (NaN if n_tokens <= 1e6)",
    "freq_over_1_percent": "fraction of latents firing on more than 1% of eval tokens",
    "freq_over_10_percent": "fraction of latents firing on more than 10% of eval tokens",
    "frac_dead_train": "fraction of latents not fired in the last dead_window_tokens training tokens",
    "dead_window_tokens": "the training-token window of frac_dead_train",
    "ce_n_tokens": "counted next-token predictions in the CE/KL metrics",
    "ce_clean": "mean next-token CE (nats), unmodified model",
    "ce_sae": "mean next-token CE (nats), SAE reconstruction spliced into the hookpoint",
    "ce_zero": "mean next-token CE (nats), hookpoint replaced by zeros",
    "delta_ce": "ce_sae - ce_clean",
    "ce_loss_score": "(ce_zero - ce_sae) / (ce_zero - ce_clean)",
    "kl_sae": "mean per-token KL(clean || SAE-spliced) of the next-token distribution (nats)",
    "kl_zero": "mean per-token KL(clean || zero-spliced) (nats)",
    "kl_score": "(kl_zero - kl_sae) / kl_zero",
    "ce_score_unstable": "ce_zero - ce_clean < 0.1 nats: ce_loss_score has a near-zero denominator",
    "kl_score_unstable": "kl_zero < 0.1 nats: kl_score has a near-zero denominator",
    "ce_score_meaningful": "variant == 'trained': only then is CE score 'performance recovered'",
    "schema_version": "version of this row layout",
}

#: Our column -> SAEBench "core" eval metric with the same meaning. Names checked against
#: SAEBench's sae_bench/evals/core/eval_output.py; definitions differ in aggregation details
#: noted in docs/metrics.md (we aggregate over the whole eval set, not per batch).
SAEBENCH_NAMES: dict[str, str] = {
    "explained_variance": "explained_variance",
    "mse": "mse",
    "cossim": "cossim",
    "l2_norm_in": "l2_norm_in",
    "l2_norm_out": "l2_norm_out",
    "l2_ratio": "l2_ratio",
    "relative_reconstruction_bias": "relative_reconstruction_bias",
    "l0": "l0",
    "l1": "l1",
    "frac_alive": "frac_alive",
    "freq_over_1_percent": "freq_over_1_percent",
    "freq_over_10_percent": "freq_over_10_percent",
    "ce_clean": "ce_loss_without_sae",
    "ce_sae": "ce_loss_with_sae",
    "ce_zero": "ce_loss_with_ablation",
    "ce_loss_score": "ce_loss_score",
    "kl_sae": "kl_div_with_sae",
    "kl_zero": "kl_div_with_ablation",
    "kl_score": "kl_div_score",
    "n_tokens": "total_tokens_eval_reconstruction",
}

_ARROW_TYPES = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}


def _arrow_type(annotation: str) -> pa.DataType:
    base = annotation.replace(" | None", "").strip()
    return _ARROW_TYPES[base]


def arrow_schema(extra: Mapping[str, object] | None = None) -> pa.Schema:
    """The Arrow schema of a row: ``extra`` identifier columns first, then the metrics."""
    fields = []
    for key, value in (extra or {}).items():
        fields.append(pa.field(key, _arrow_type(type(value).__name__)))
    for f in dataclasses.fields(SaeMetricsRow):
        fields.append(pa.field(f.name, _arrow_type(str(f.type)), nullable=True))
    return pa.schema(fields)


def build_row(
    variant: str,
    layer: int,
    recon: ReconstructionResult,
    downstream: DownstreamResult | None = None,
    frac_dead_train: float | None = None,
    dead_window_tokens: int | None = None,
) -> SaeMetricsRow:
    """Assemble a row from the two results (the firing counts are not part of the row)."""
    rec: dict[str, Any] = {
        f.name: getattr(recon, f.name)
        for f in dataclasses.fields(recon)
        if f.name != "firing_counts"
    }
    ds_fields = [
        f.name for f in dataclasses.fields(DownstreamResult) if f.name != "ce_score_meaningful"
    ]
    if downstream is None:
        down: dict[str, Any] = dict.fromkeys(ds_fields)
        # The flag depends only on the variant; keep it even without CE numbers.
        meaningful = variant in CE_SCORE_MEANINGFUL_VARIANTS
    else:
        down = {name: getattr(downstream, name) for name in ds_fields}
        meaningful = downstream.ce_score_meaningful
    return SaeMetricsRow(
        variant=variant,
        layer=layer,
        **rec,
        frac_dead_train=frac_dead_train,
        dead_window_tokens=dead_window_tokens,
        **down,
        ce_score_meaningful=meaningful,
    )


def write_row(
    row: SaeMetricsRow, path: str | os.PathLike[str], extra: Mapping[str, object] | None = None
) -> None:
    """Write one row as a Parquet file; ``extra`` adds identifier columns (str/int/float/bool)
    in front, e.g. ``{"model": "pythia-70m", "sae_key": "..."}``.
    """
    extra = dict(extra or {})
    clash = set(extra) & {f.name for f in dataclasses.fields(SaeMetricsRow)}
    if clash:
        raise ValueError(f"extra columns clash with metric columns: {sorted(clash)}")
    schema = arrow_schema(extra)
    values = {**extra, **dataclasses.asdict(row)}
    table = pa.Table.from_pydict({k: [values[k]] for k in schema.names}, schema=schema)
    write_parquet_atomic(table, path)


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, object]]:
    """Read a rows file back as a list of dicts (tests and quick inspection)."""
    return pq.read_table(path).to_pylist()


def write_firing_counts(counts: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Per-latent eval firing counts (one int64 per latent, indexed by latent id) as Parquet.

    Kept out of the row because it is n_latents long; the aggregate stage can join it by file.
    """
    arr = np.asarray(counts, dtype=np.int64)
    table = pa.table({"latent": np.arange(arr.size, dtype=np.int64), "firing_count": arr})
    write_parquet_atomic(table, path)
