"""Does a metric tell a trained model's SAEs from a random variant's? The headline table.

For every model, layer, SAE setting (expansion, k), metric and random variant, the trained
sample is compared with the variant's sample:

- ``difference`` = mean(variant) - mean(trained), with a 95% percentile bootstrap CI (each
  side resampled within itself);
- ``p_value``: two-sided permutation test of that difference (exact when the relabellings
  are few, as with a handful of seeds);
- ``effect_size``: Cohen's d (pooled standard deviation);
- ``auroc`` (per-latent metrics only): how well the metric's value alone tells a trained
  latent from a variant latent, P(trained value > variant value) with ties one half;
  0.5 = indistinguishable, near 0 or 1 = separated; bootstrap CI from the same resamples.

What a sample is depends on the metric's level (the ``observations`` view): per-SAE metrics
(one number per SAE: explained variance, CE score, pooled AUROC, ...) have one value per seed,
so n is the number of seeds and with a single seed per side no CI or p-value exists (NaN, and
``note`` says so); per-latent metrics (token entropy, token-lookup share, frequency, max
activation, per-latent detection/fuzzing AUROC) have one value per latent, pooled over seeds.

``separated`` is the verdict at level ``alpha``: the p-value is below it, the difference CI
excludes 0 and, for per-latent metrics, the AUROC CI excludes 0.5. It is nominal: no
correction for the many cells is applied, and with thousands of latents even a small shift is
"separated", so read the AUROC (or effect size) for how large it is.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from randsae.enums import TRAINED
from randsae.results.display import variant_sort_key
from randsae.results.stats import (
    cohens_d,
    finite,
    permutation_pvalue,
    point_auroc,
    rescaled_ci,
    rng_for,
    subsample,
    subsample_fraction,
    two_sample_bootstrap,
)

SAE_LEVEL, LATENT_LEVEL = "sae", "latent"
#: Fewest values per side for a CI and a p-value.
MIN_PER_SIDE = 2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Comparison:
    """Trained vs one variant on one metric (one cell of the table)."""

    n_trained: int
    n_variant: int
    trained_value: float
    variant_value: float
    difference: float
    difference_lo: float
    difference_hi: float
    effect_size: float
    p_value: float
    auroc: float
    auroc_lo: float
    auroc_hi: float
    separated: bool | None
    note: str


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else math.nan


def compare(trained: np.ndarray, variant: np.ndarray, *, level: str, rng: np.random.Generator,
            n_boot: int = 1000, n_perm: int = 1000, alpha: float = 0.01) -> Comparison:
    """Compare two samples of one metric; non-finite values are dropped first."""
    a, b = finite(trained), finite(variant)
    unit = "seeds" if level == SAE_LEVEL else "latents"
    auc = point_auroc(a, b) if level == LATENT_LEVEL else math.nan
    common: dict[str, Any] = {
        "n_trained": int(a.size), "n_variant": int(b.size), "trained_value": _mean(a),
        "variant_value": _mean(b), "difference": _mean(b) - _mean(a), "effect_size": cohens_d(a, b), "auroc": auc,
    }
    if a.size < MIN_PER_SIDE or b.size < MIN_PER_SIDE:
        return Comparison(**common, difference_lo=math.nan, difference_hi=math.nan, p_value=math.nan,
                          auroc_lo=math.nan, auroc_hi=math.nan, separated=None,
                          note=f"n = {unit}; fewer than 2 per side: no CI or p-value")
    latent = level == LATENT_LEVEL
    f = subsample_fraction(a.size, b.size)
    sa, sb = subsample(a, f, rng), subsample(b, f, rng)
    boot = two_sample_bootstrap(sa, sb, n_boot, rng, with_auroc=latent)
    lo, hi = rescaled_ci(common["difference"], _mean(sb) - _mean(sa), boot.difference, f)
    alo, ahi = (math.nan, math.nan)
    if latent:
        alo, ahi = rescaled_ci(auc, point_auroc(sa, sb), boot.auroc, f)
        alo, ahi = max(0.0, alo), min(1.0, ahi)
    p, method = permutation_pvalue(a, b, n_perm, rng)
    separated = bool(p < alpha and (lo > 0 or hi < 0))
    if latent:
        separated = separated and bool(alo > 0.5 or ahi < 0.5)
    boot_note = "" if f >= 1 else f"; bootstrap on a {f:.3g} subsample, rescaled"
    return Comparison(**common, difference_lo=lo, difference_hi=hi, p_value=p, auroc_lo=alo, auroc_hi=ahi,
                      separated=separated, note=f"n = {unit}; {method} permutation test{boot_note}")


SCHEMA = pa.schema(
    [pa.field("model", pa.string()), pa.field("layer", pa.int32()), pa.field("expansion", pa.int32()),
     pa.field("k", pa.int32()), pa.field("level", pa.string()), pa.field("metric", pa.string()),
     pa.field("variant", pa.string()), pa.field("n_trained", pa.int64()), pa.field("n_variant", pa.int64())]
    + [pa.field(n, pa.float64()) for n in ("trained_value", "variant_value", "difference", "difference_lo",
                                           "difference_hi", "effect_size", "p_value", "auroc", "auroc_lo", "auroc_hi")]
    + [pa.field("separated", pa.bool_()), pa.field("note", pa.string())]
)


def discriminability(con: duckdb.DuckDBPyConnection, seed: int, *, n_boot: int = 1000, n_perm: int = 1000,
                     alpha: float = 0.01, source: str = "observations") -> pa.Table:
    """The table, from a relation ``source`` with columns model, layer, expansion, k, variant,
    level, metric, value (the database's ``observations`` view)."""
    rows: list[dict[str, Any]] = []
    cells = con.sql(f"SELECT DISTINCT model, layer, expansion, k FROM {source} ORDER BY ALL").fetchall()
    where = "WHERE model = ? AND layer = ? AND expansion = ? AND k = ? AND value IS NOT NULL"
    for model, layer, expansion, k in cells:
        cell = [model, layer, expansion, k]
        # groups and values in the same order: each group is a contiguous slice (no string
        # matching over hundreds of thousands of rows in Python); values sorted within a group
        # so that the seeded resampling sees the same input order on every build
        groups = con.execute(f"SELECT level, metric, variant, count(*) FROM {source} {where} "
                             "GROUP BY level, metric, variant ORDER BY level, metric, variant", cell).fetchall()
        values = con.execute(f"SELECT CAST(value AS DOUBLE) AS value FROM {source} {where} "
                             "ORDER BY level, metric, variant, value", cell).fetchnumpy()["value"]
        values = np.asarray(values, dtype=np.float64)
        samples: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        start = 0
        for level, metric, variant, n in groups:
            samples.setdefault((level, metric), {})[variant] = values[start : start + n]
            start += n
        for (level, metric), by_variant in samples.items():
            trained = by_variant.get(TRAINED)
            if trained is None or finite(trained).size == 0:
                continue
            for variant in sorted(set(by_variant) - {TRAINED}, key=variant_sort_key):
                other = by_variant[variant]
                if finite(other).size == 0:
                    continue
                rng = rng_for(seed, "discriminability", model, layer, expansion, k, level, metric, variant)
                c = compare(trained, other, level=level, rng=rng, n_boot=n_boot, n_perm=n_perm, alpha=alpha)
                rows.append({"model": model, "layer": layer, "expansion": expansion, "k": k, "level": level,
                             "metric": metric, "variant": variant, **asdict(c)})
    undefined = [r for r in rows if r["level"] == SAE_LEVEL and r["separated"] is None]
    if undefined:
        log.warning("%s", undefined_rows_message(undefined, alpha))
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def seeds_for_verdict(alpha: float) -> int:
    """Fewest seeds per side (equal sides) whose exact two-sided permutation test can reach
    p < alpha: the smallest p is 2 / C(2n, n) (the extreme relabelling and its mirror)."""
    n = MIN_PER_SIDE
    while 2 / math.comb(2 * n, n) >= alpha:
        n += 1
    return n


def undefined_rows_message(rows: list[dict[str, Any]], alpha: float) -> str:
    """One warning naming the per-SAE rows without a CI or p-value (a side has fewer SAEs
    than the statistic needs): the metrics, grouped by the (model, layer, setting, variant)
    cells that share them, and the seeds needed."""
    by_cell: dict[tuple[str, int, int, int, str], list[str]] = {}
    for r in rows:
        by_cell.setdefault((r["model"], r["layer"], r["expansion"], r["k"], r["variant"]), []).append(r["metric"])
    by_metrics: dict[tuple[str, ...], list[str]] = {}
    for (model, layer, expansion, k, variant), metrics in sorted(by_cell.items(), key=lambda kv: kv[0]):
        by_metrics.setdefault(tuple(sorted(metrics)), []).append(f"{model} L{layer} x{expansion}-k{k} {variant}")
    parts = [f"metrics {', '.join(ms)} at {'; '.join(cells)}" for ms, cells in by_metrics.items()]
    return (f"discriminability: {len(rows)} per-SAE row(s) have no CI, p-value or verdict because a side has "
            f"fewer than {MIN_PER_SIDE} SAEs (seeds): {' | '.join(parts)}. A CI and p-value need at least "
            f"{MIN_PER_SIDE} seeds per variant (config `sae.seeds`); a verdict at alpha {alpha:g} needs at least "
            f"{seeds_for_verdict(alpha)}.")
