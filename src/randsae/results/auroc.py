"""Auto-interp score summaries from the per-example ``scores`` table.

Two tables:

- ``auroc``: one row per (SAE, scorer, explanation source), pooled over the SAE's latents (as
  in the paper): AUROC of the judge's probability against the true label, a 95% cluster
  bootstrap CI that resamples latents, and the threshold metrics at P > 0.5.
- ``latent_auroc``: the same per latent (no CI), which is what lets the discriminability
  table compare the distribution of per-latent AUROCs between trained and random SAEs.

Definitions match ``randsae.autointerp.stats`` (docs/autointerp.md): failed examples (no
probability, or ``ok`` false) are left out of every statistic and counted in ``n_failed``.
"""

from __future__ import annotations

import math
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from randsae.autointerp.stats import auroc as _auroc
from randsae.autointerp.stats import binary_metrics
from randsae.results.layout import ID_COLUMNS
from randsae.results.stats import cluster_bootstrap_auroc, percentile_ci, point_auroc, rng_for

_IDS = [
    pa.field("sae_key", pa.string()),
    pa.field("model", pa.string()),
    pa.field("variant", pa.string()),
    pa.field("layer", pa.int32()),
    pa.field("expansion", pa.int32()),
    pa.field("k", pa.int32()),
    pa.field("seed", pa.int32()),
    pa.field("scorer", pa.string()),
    pa.field("explanation_source", pa.string()),
]
_COUNTS = [pa.field(n, pa.int64()) for n in ("n", "n_pos", "n_neg", "n_failed")]
_THRESHOLD = [pa.field(n, pa.float64()) for n in ("balanced_accuracy", "accuracy", "precision", "recall", "tpr", "tnr")]

AUROC_SCHEMA = pa.schema(
    [*_IDS, pa.field("n_latents", pa.int64()), *_COUNTS,
     *[pa.field(n, pa.float64()) for n in ("auroc", "auroc_lo", "auroc_hi")], *_THRESHOLD]
)
LATENT_AUROC_SCHEMA = pa.schema([*_IDS, pa.field("latent", pa.int64()), *_COUNTS, pa.field("auroc", pa.float64()), *_THRESHOLD])


def _threshold(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    m = binary_metrics(y, p)
    return {"balanced_accuracy": m.balanced_accuracy, "accuracy": m.accuracy, "precision": m.precision,
            "recall": m.recall, "tpr": m.tpr, "tnr": m.tnr}


def _counts(y: np.ndarray, n_failed: int) -> dict[str, int]:
    return {"n": int(y.size), "n_pos": int(y.sum()), "n_neg": int(y.size - y.sum()), "n_failed": n_failed}


def auroc_tables(con: duckdb.DuckDBPyConnection, seed: int, n_boot: int = 1000) -> tuple[pa.Table, pa.Table]:
    """(auroc, latent_auroc) from the connection's ``scores`` and ``saes`` tables."""
    pooled: list[dict[str, Any]] = []
    per_latent: list[dict[str, Any]] = []
    ids_sql = ", ".join(ID_COLUMNS)
    saes = con.sql(f"SELECT {ids_sql} FROM saes WHERE sae_key IN (SELECT DISTINCT sae_key FROM scores) ORDER BY ALL").fetchall()
    for row in saes:
        ids = dict(zip(ID_COLUMNS, row, strict=True))
        d = con.execute(
            "SELECT scorer, explanation_source, latent, activating, coalesce(probability, 'NaN'::DOUBLE) AS probability, "
            "coalesce(ok, true) AS ok "
            "FROM scores WHERE sae_key = ? AND scorer IS NOT NULL AND explanation_source IS NOT NULL "
            "AND activating IS NOT NULL AND latent IS NOT NULL",
            [ids["sae_key"]],
        ).fetchnumpy()
        prob = np.asarray(d["probability"], dtype=np.float64)  # NULL became NaN in SQL
        valid = np.asarray(d["ok"], dtype=bool) & np.isfinite(prob)
        labels = np.asarray(d["activating"], dtype=bool)
        latents = np.asarray(d["latent"], dtype=np.int64)
        group_keys = np.char.add(np.char.add(np.asarray(d["scorer"], dtype=str), "\x1f"), np.asarray(d["explanation_source"], dtype=str))
        for key in np.unique(group_keys):
            scorer, source = str(key).split("\x1f")
            sel = group_keys == key
            ok = sel & valid
            y, p, g = labels[ok], prob[ok], latents[ok]
            base = {**ids, "scorer": scorer, "explanation_source": source}
            lo, hi = percentile_ci(cluster_bootstrap_auroc(y, p, g, n_boot, rng_for(seed, "auroc", ids["sae_key"], scorer, source)))
            pooled.append({
                **base, "n_latents": int(np.unique(latents[sel]).size), **_counts(y, int(sel.sum() - ok.sum())),
                "auroc": point_auroc(p[y], p[~y]), "auroc_lo": lo, "auroc_hi": hi, **_threshold(y, p),
            })
            for lat in np.unique(latents[sel]):
                lsel = sel & (latents == lat)
                lok = lsel & valid
                ly, lp = labels[lok], prob[lok]
                per_latent.append({
                    **base, "latent": int(lat), **_counts(ly, int(lsel.sum() - lok.sum())),
                    "auroc": _auroc(ly, lp) if ly.size else math.nan, **_threshold(ly, lp),
                })
    return (pa.Table.from_pylist(pooled, schema=AUROC_SCHEMA), pa.Table.from_pylist(per_latent, schema=LATENT_AUROC_SCHEMA))
