"""The headline: one row per metric, one column per random variant, readable at a glance.

Each cell condenses the discriminability rows of one (metric, variant) over every cell of the
run (model, layer, SAE setting) into ``"+0.12 [0.05, 0.19] *"``:

- the effect: the mean over cells of ``difference`` (variant - trained, in the metric's units);
- its 95% CI: normal approximation, each cell's standard error taken from its bootstrap CI
  (half-width / 1.96) and the cells independent (different SAEs), so the mean's standard error
  is ``sqrt(sum se^2) / n_cells``; ``[no CI]`` when any cell has none (one seed per side);
- the mark: ``*`` when the metric separates trained from the variant (``separated``) in every
  cell compared, ``k/n`` when in k of n cells, nothing when in none.

Why a view over ``discriminability`` and not a table of its own: the headline then cannot
disagree with the long table it summarises. Its variant columns are the config's random
variants, so the view is created per build (:func:`headline_view_sql`).
"""

from __future__ import annotations

from collections.abc import Sequence

from randsae.results.display import sort_variants

#: Metrics shown first, in this order (the paper's); the others follow alphabetically.
HEADLINE_METRICS: tuple[str, ...] = (
    "explained_variance", "cossim", "l0", "l1", "ce_loss_score", "auroc_detection", "auroc_fuzzing",
    "token_entropy", "token_entropy_mean", "latent_auroc_detection", "latent_auroc_fuzzing",
)
#: z for a two-sided 95% normal interval.
Z95 = 1.959963984540054
VIEW = "headline"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def headline_view_sql(variants: Sequence[str]) -> str:
    """``CREATE VIEW headline``: columns level, metric and one per random variant (display
    order; ``variants`` must not include trained)."""
    order = " ".join(f"WHEN {_lit(m)} THEN {i}" for i, m in enumerate(HEADLINE_METRICS))
    pivots = "".join(f",\n       max(cell) FILTER (WHERE variant = {_lit(v)}) AS {_q(v)}" for v in sort_variants(variants))
    return f"""
CREATE OR REPLACE VIEW {VIEW} AS
WITH pooled AS (
  SELECT level, metric, variant, count(*) AS n_cells, avg(difference) AS effect,
         count(*) FILTER (WHERE isfinite(difference_lo) AND isfinite(difference_hi)) AS n_ci,
         sqrt(sum(power((difference_hi - difference_lo) / (2 * {Z95}), 2))) / count(*) AS se,
         count(*) FILTER (WHERE separated) AS n_separated
  FROM discriminability GROUP BY level, metric, variant
), cells AS (
  SELECT level, metric, variant,
         format('{{:+.3g}}', effect)
         || CASE WHEN n_ci = n_cells THEN format(' [{{:.3g}}, {{:.3g}}]', effect - {Z95} * se, effect + {Z95} * se)
                 ELSE ' [no CI]' END
         || CASE WHEN n_separated = n_cells THEN ' *'
                 WHEN n_separated > 0 THEN ' ' || n_separated || '/' || n_cells ELSE '' END AS cell
  FROM pooled
)
SELECT level, metric{pivots}
FROM cells GROUP BY level, metric
ORDER BY CASE metric {order} ELSE {len(HEADLINE_METRICS)} END, metric"""
