"""The paper's qualitative claims, each tested on this run's data: the ``findings`` table.

One :class:`Claim` per claim: its text, where the paper makes it, the statistic's definition,
the unit resampled, and a :class:`Rule` that turns the statistic's 95% bootstrap CI into a
verdict (``holds``, ``does_not_hold`` or ``inconclusive``). Verdicts are computed from the data
on every build; nothing here says what the answer is.

Why statistics of group means: every claim compares variants "in general", so each statistic
is built from the mean of one (cell, variant) group, a cell being one model, layer and SAE
setting (expansion, k), and combines those means over the cells where the compared variants
were all measured. The bootstrap resamples the units (SAEs for per-SAE metrics, latents for
per-latent metrics) within each group, with the group sizes fixed, as the discriminability
table does; the cells themselves are the run's design and are not resampled. A group of one
SAE (one seed) cannot be resampled, so a per-SAE claim then has its value but no CI and is
``inconclusive`` (``note`` says how many seeds are needed). Missing data (a stage not run, a
variant not in the config) is ``inconclusive`` with the reason in ``note``, never an error.

Randomness: each group's resamples come from ``rng_for(seed, "findings", claim id, group)``,
so a claim's numbers do not depend on which other claims or groups exist.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

import duckdb
import numpy as np
import pyarrow as pa

from randsae.enums import SCORERS, TRAINED, VARIANTS
from randsae.results.display import sort_variants
from randsae.results.stats import bootstrap_means, percentile_ci, rng_for

#: The noise-input variant (docs/variants.md): the paper's "at chance" reference.
CONTROL = "control"
if CONTROL not in VARIANTS:  # pragma: no cover - a guard for whoever renames a variant
    raise RuntimeError(f"CONTROL ({CONTROL!r}) must be one of VARIANTS {VARIANTS}")
#: The variants whose weights are randomized (every variant but trained and the control).
RANDOMIZED: tuple[str, ...] = tuple(v for v in VARIANTS if v not in (TRAINED, CONTROL))

HOLDS, DOES_NOT_HOLD, INCONCLUSIVE = "holds", "does_not_hold", "inconclusive"
VERDICTS: tuple[str, ...] = (HOLDS, DOES_NOT_HOLD, INCONCLUSIVE)
CI_LEVEL = 0.95
#: Fewest units a group needs for its mean to be resampled (one value has no spread).
MIN_GROUP = 2
SECTION_NOT_CHECKED = "section not checked"

Cell = tuple[str, int, int, int]  # model, layer, expansion, k
Key = tuple[Cell, str]  # (cell, variant)
Means = Mapping[Key, np.ndarray]  # a group's mean: shape [1] for the point, [n_boot] resampled


class Estimate(NamedTuple):
    """A claim's statistic on this run's data."""

    value: float
    ci_lo: float
    ci_hi: float
    n: int  # units (SAEs or latents) the statistic reads
    note: str


@dataclass(frozen=True)
class Rule:
    """How a CI becomes a verdict.

    ``above``: holds if the CI lies wholly above ``bound``, does_not_hold if wholly below.
    ``below``: the mirror image. ``within`` (equivalence, for "close" or "near" claims):
    holds if the CI lies wholly inside (-``bound``, +``bound``), does_not_hold if wholly
    outside it. Anything else, or no CI, is inconclusive.
    """

    kind: Literal["above", "below", "within"]
    bound: float

    def verdict(self, lo: float, hi: float) -> str:
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return INCONCLUSIVE
        b = self.bound
        if self.kind == "above":
            return HOLDS if lo > b else DOES_NOT_HOLD if hi < b else INCONCLUSIVE
        if self.kind == "below":
            return HOLDS if hi < b else DOES_NOT_HOLD if lo > b else INCONCLUSIVE
        return HOLDS if -b < lo and hi < b else DOES_NOT_HOLD if lo > b or hi < -b else INCONCLUSIVE

    def text(self) -> str:
        ci = f"{CI_LEVEL:.0%} CI"
        if self.kind == "above":
            return f"holds if the {ci} lies above {self.bound:g}; does_not_hold if below; else inconclusive"
        if self.kind == "below":
            return f"holds if the {ci} lies below {self.bound:g}; does_not_hold if above; else inconclusive"
        return (f"holds if the {ci} lies within +-{self.bound:g} (equivalence margin); "
                f"does_not_hold if wholly outside it; else inconclusive")


#: What a claim's statistic is made of: the groups' samples and the function of their means.
class Contrast(NamedTuple):
    groups: dict[Key, np.ndarray]
    stat: Callable[[Means], np.ndarray]
    unit: str  # "SAEs" or "latents"
    cells: int  # how many cells (or series) the statistic combines
    over: str = "cell(s)"  # what those are


#: A claim's data step: the contrast, or the reason it cannot be computed.
Compute = Callable[[duckdb.DuckDBPyConnection], "Contrast | str"]


@dataclass(frozen=True)
class Claim:
    """One of the paper's claims and how this run tests it."""

    id: str
    claim: str
    paper: str  # where the paper says it
    statistic: str  # the statistic's definition
    rule: Rule
    compute: Compute


# ------------------------------------------------------------------------------ data


def _groups(con: duckdb.DuckDBPyConnection, sql: str) -> dict[Key, np.ndarray]:
    """{(cell, variant): values} from a query returning model, layer, expansion, k, variant,
    value; non-finite values dropped, values sorted within a group (the resampling then sees
    the same input order on every build)."""
    rows = con.sql(f"SELECT * FROM ({sql}) WHERE value IS NOT NULL AND isfinite(value) "
                   "ORDER BY model, layer, expansion, k, variant, value").fetchall()
    out: dict[Key, list[float]] = {}
    for model, layer, expansion, k, variant, value in rows:
        out.setdefault(((model, int(layer), int(expansion), int(k)), variant), []).append(float(value))
    return {key: np.asarray(v, dtype=np.float64) for key, v in out.items()}


def _sae_metric(metric: str) -> str:
    return f"SELECT model, layer, expansion, k, variant, value FROM sae_metric_values WHERE metric = '{metric}'"


_CE_GAP = "SELECT model, layer, expansion, k, variant, ce_zero - ce_clean AS value FROM sae_metrics"
_TOKEN_ENTROPY = "SELECT model, layer, expansion, k, variant, token_entropy AS value FROM latents WHERE sampled"


def _latent_auroc(scorer: str) -> str:
    return ("SELECT model, layer, expansion, k, variant, auroc AS value FROM latent_auroc "
            f"WHERE explanation_source = 'own' AND scorer = '{scorer}'")


def _own_minus_control(scorer: str) -> str:
    """Per latent: AUROC with its own explanation minus AUROC with another latent's."""
    return ("SELECT o.model, o.layer, o.expansion, o.k, o.variant, o.auroc - c.auroc AS value "
            "FROM latent_auroc o JOIN latent_auroc c USING (sae_key, scorer, latent) "
            f"WHERE o.explanation_source = 'own' AND c.explanation_source = 'control' AND o.scorer = '{scorer}' "
            "AND isfinite(o.auroc) AND isfinite(c.auroc)")


def _cells(groups: Mapping[Key, np.ndarray], *variants: str) -> list[Cell]:
    """Cells where every one of ``variants`` has a group."""
    have: dict[Cell, set[str]] = {}
    for cell, variant in groups:
        have.setdefault(cell, set()).add(variant)
    return sorted(c for c, vs in have.items() if set(variants) <= vs)


def _used(groups: Mapping[Key, np.ndarray], cells: Mapping[str, list[Cell]], ref: str) -> dict[Key, np.ndarray]:
    """The groups a statistic reads: each variant's groups in its ``cells``, and ``ref``'s
    groups in all of those cells."""
    out = {(c, v): groups[(c, v)] for v, cs in cells.items() for c in cs}
    out.update({(c, ref): groups[(c, ref)] for cs in cells.values() for c in cs})
    return out


def _mean_diff(means: Means, x: str, y: str, cells: list[Cell]) -> np.ndarray:
    """mean over ``cells`` of mean(x) - mean(y)."""
    return np.asarray(sum(means[(c, x)] - means[(c, y)] for c in cells)) / len(cells)


def _absent(what: str, ref: str, others: str, table: str) -> str:
    return (f"no cell where {what} of {ref} and of {others} are in `{table}` "
            "(stage not run, or variant not in the config)")


# ------------------------------------------------------------------------- contrasts


def _vs_reference(groups: dict[Key, np.ndarray], others: tuple[str, ...], ref: str, unit: str, table: str,
                  what: str, combine: Literal["min", "farthest"], sign: Literal[1, -1]) -> Contrast | str:
    """For each variant v of ``others`` present: d_v = mean over its cells shared with ``ref``
    of sign * (mean(v) - mean(ref)); then combine: the smallest d_v (a claim about all of
    them) or the d_v farthest from 0 (an equivalence claim about all of them)."""
    by_variant = {v: _cells(groups, v, ref) for v in others}
    by_variant = {v: cs for v, cs in by_variant.items() if cs}
    if not by_variant:
        return _absent(what, ref, "any of " + ", ".join(others), table)
    used = _used(groups, by_variant, ref)

    def stat(means: Means) -> np.ndarray:
        d = np.stack([sign * _mean_diff(means, v, ref, cs) for v, cs in by_variant.items()])
        if combine == "min":
            return np.asarray(d.min(axis=0))
        far = np.abs(d).argmax(axis=0)
        return np.asarray(np.take_along_axis(d, far[None, :], axis=0)[0])

    return Contrast(used, stat, unit, len({c for cs in by_variant.values() for c in cs}))


def _ev_control_lowest(con: duckdb.DuckDBPyConnection) -> Contrast | str:
    groups = _groups(con, _sae_metric("explained_variance"))
    others = tuple(v for v in sort_variants({v for _, v in groups}) if v != CONTROL)
    if not others:
        return _absent("explained variance", CONTROL, "another variant", "sae_metrics")
    return _vs_reference(groups, others, CONTROL, "SAEs", "sae_metrics", "explained variance", "min", 1)


def _ce_gap_ratio(con: duckdb.DuckDBPyConnection) -> Contrast | str:
    groups = _groups(con, _CE_GAP)
    others = tuple(v for v in sort_variants({v for _, v in groups}) if v != TRAINED)
    by_variant = {v: cs for v in others if (cs := _cells(groups, v, TRAINED))}
    if not by_variant:
        return _absent("CE_zero - CE_clean", TRAINED, "another variant", "sae_metrics")
    used = _used(groups, by_variant, TRAINED)

    def stat(means: Means) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            r = [np.asarray(sum(means[(c, v)] / means[(c, TRAINED)] for c in cs)) / len(cs)
                 for v, cs in by_variant.items()]
        return np.asarray(np.max(np.stack(r), axis=0))

    return Contrast(used, stat, "SAEs", len({c for cs in by_variant.values() for c in cs}))


def _entropy_control_above_trained(con: duckdb.DuckDBPyConnection) -> Contrast | str:
    return _vs_reference(_groups(con, _TOKEN_ENTROPY), (CONTROL,), TRAINED, "latents", "latents",
                        "token entropies", "min", 1)


def _entropy_trained_vs_randomized(con: duckdb.DuckDBPyConnection) -> Contrast | str:
    return _vs_reference(_groups(con, _TOKEN_ENTROPY), RANDOMIZED, TRAINED, "latents", "latents",
                        "token entropies", "min", -1)


def _entropy_depth_trend(con: duckdb.DuckDBPyConnection) -> Contrast | str:
    """Least-squares slope of the per-layer mean entropy on relative depth (layer / the
    largest layer measured for that model and setting), trained minus variant, averaged over
    (model, setting) series with at least 2 such layers; the smallest over randomized variants."""
    groups = _groups(con, _TOKEN_ENTROPY)
    series: dict[str, list[tuple[list[Cell], np.ndarray]]] = {}
    for v in RANDOMIZED:
        by_series: dict[tuple[str, int, int], list[Cell]] = {}
        for c in _cells(groups, v, TRAINED):
            by_series.setdefault((c[0], c[2], c[3]), []).append(c)
        for cells in by_series.values():
            depth = np.array([c[1] for c in cells], dtype=np.float64)
            if depth.size < 2 or depth.max() == 0:
                continue
            x = depth / depth.max()
            w = (x - x.mean()) / ((x - x.mean()) ** 2).sum()  # slope(y) = w @ y
            series.setdefault(v, []).append((cells, w))
    if not series:
        return (f"no model with 2 or more layers measured for both {TRAINED} and one of "
                f"{', '.join(RANDOMIZED)} in `latents`")
    used = {(c, name): groups[(c, name)] for v, ss in series.items() for cells, _ in ss for c in cells
            for name in (v, TRAINED)}

    def stat(means: Means) -> np.ndarray:
        per_variant = []
        for v, ss in series.items():
            slopes = [sum(wi * (means[(c, TRAINED)] - means[(c, v)]) for c, wi in zip(cells, w, strict=True))
                      for cells, w in ss]
            per_variant.append(np.asarray(sum(slopes)) / len(slopes))
        return np.asarray(np.min(np.stack(per_variant), axis=0))

    return Contrast(used, stat, "latents", sum(len(ss) for ss in series.values()), "(model, setting, variant) series")


def _auroc_close(scorer: str) -> Compute:
    def compute(con: duckdb.DuckDBPyConnection) -> Contrast | str:
        return _vs_reference(_groups(con, _latent_auroc(scorer)), RANDOMIZED, TRAINED, "latents", "latent_auroc",
                             f"{scorer} AUROCs", "farthest", 1)
    return compute


def _control_own_vs_random_explanation(scorer: str) -> Compute:
    def compute(con: duckdb.DuckDBPyConnection) -> Contrast | str:
        groups = {key: x for key, x in _groups(con, _own_minus_control(scorer)).items() if key[1] == CONTROL}
        cells = sorted(c for c, _ in groups)
        if not cells:
            return (f"no {CONTROL} latent with both an own- and a control-explanation {scorer} AUROC in "
                    "`latent_auroc` (score stage not run, or variant not in the config)")

        def stat(means: Means) -> np.ndarray:
            return np.asarray(sum(means[(c, CONTROL)] for c in cells)) / len(cells)

        return Contrast(groups, stat, "latents", len(cells))
    return compute


# ------------------------------------------------------------------------------ claims

_RANDOMIZED_TEXT = ", ".join(RANDOMIZED)
_CELL_MEAN = "mean over cells (model, layer, SAE setting) of the per-cell difference of group means"

CLAIMS: tuple[Claim, ...] = (
    Claim(
        id="ev_control_lowest",
        claim="The control's explained variance is below every other variant's.",
        paper=f"listed by randsae issue 17; not in FIELD-NOTES' summary of the paper ({SECTION_NOT_CHECKED})",
        statistic=f"min over variants v != control of the {_CELL_MEAN}, EV(v) - EV(control); per-SAE EV",
        rule=Rule("above", 0.0),
        compute=_ev_control_lowest,
    ),
    Claim(
        id="ce_score_trained_only",
        claim="The CE loss score is meaningful only for the trained model: no other variant's "
              "zero-ablation costs it much loss, so its score divides by a near-zero gap.",
        paper=f"Metrics reported: CE loss score (meaningful for the trained model only) ({SECTION_NOT_CHECKED})",
        statistic="max over variants v != trained of the mean over cells of gap(v) / gap(trained), "
                  "gap = the group's mean of CE_zero - CE_clean over its SAEs",
        rule=Rule("below", 0.1),
        compute=_ce_gap_ratio,
    ),
    Claim(
        id="entropy_control_above_trained",
        claim="Token entropy is higher for the control than for the trained model.",
        paper=f"Findings: token entropy ... control high ({SECTION_NOT_CHECKED})",
        statistic=f"{_CELL_MEAN}, token entropy(control) - token entropy(trained); per sampled latent",
        rule=Rule("above", 0.0),
        compute=_entropy_control_above_trained,
    ),
    Claim(
        id="entropy_trained_vs_randomized",
        claim="The trained model's token entropy is at least the randomized variants'.",
        paper=f"Findings: token entropy ... randomized stay low ({SECTION_NOT_CHECKED})",
        statistic=f"min over randomized variants v ({_RANDOMIZED_TEXT}) of the {_CELL_MEAN}, "
                  "token entropy(trained) - token entropy(v); per sampled latent",
        rule=Rule("above", 0.0),
        compute=_entropy_trained_vs_randomized,
    ),
    Claim(
        id="entropy_depth_trend",
        claim="Token entropy rises with depth for the trained model more than for the randomized variants.",
        paper=f"Findings: token entropy rises with depth only for trained models ({SECTION_NOT_CHECKED})",
        statistic="min over randomized variants v of the mean over (model, SAE setting) of "
                  "slope(trained) - slope(v), slope = least-squares slope of the per-layer mean token entropy "
                  "on relative depth (layer / largest layer measured); needs 2 or more layers",
        rule=Rule("above", 0.0),
        compute=_entropy_depth_trend,
    ),
    *(Claim(
        id=f"auroc_close_{scorer}",
        claim=f"Auto-interp ({scorer}) AUROC is close for the trained and the randomized variants.",
        paper=f"Findings: variants overlap with trained on auto-interp ({SECTION_NOT_CHECKED})",
        statistic=f"over randomized variants v ({_RANDOMIZED_TEXT}), the {_CELL_MEAN} AUROC(v) - AUROC(trained) "
                  f"farthest from 0; per-latent {scorer} AUROC, own explanations",
        rule=Rule("within", 0.1),
        compute=_auroc_close(scorer),
    ) for scorer in SCORERS),
    *(Claim(
        id=f"control_at_chance_{scorer}",
        claim=f"The control's own-explanation {scorer} AUROC is near its random-explanation control.",
        paper=f"Findings: control at chance ({SECTION_NOT_CHECKED})",
        statistic=f"mean over cells of the control's mean per-latent {scorer} AUROC with its own explanation "
                  "minus with another latent's explanation (paired per latent)",
        rule=Rule("within", 0.05),
        compute=_control_own_vs_random_explanation(scorer),
    ) for scorer in SCORERS),
)


# ------------------------------------------------------------------------------- table


def claims_markdown(claims: tuple[Claim, ...] = CLAIMS) -> str:
    """The claims as a Markdown table (docs/results.md shows it; a test keeps them equal)."""
    lines = ["| id | claim | paper | statistic | verdict rule |", "|---|---|---|---|---|"]
    lines += [f"| `{c.id}` | {c.claim} | {c.paper} | {c.statistic} | {c.rule.text()} |" for c in claims]
    return "\n".join(lines) + "\n"


def estimate(con: duckdb.DuckDBPyConnection, claim: Claim, seed: int, n_boot: int) -> Estimate:
    """The claim's statistic with its percentile bootstrap CI (NaN where undefined)."""
    contrast = claim.compute(con)
    if isinstance(contrast, str):
        return Estimate(math.nan, math.nan, math.nan, 0, contrast)
    groups = contrast.groups
    n = int(sum(x.size for x in groups.values()))
    value = float(contrast.stat({key: np.array([x.mean()]) for key, x in groups.items()})[0])
    where = f"{contrast.cells} {contrast.over}; n = {contrast.unit}"
    small = sorted(key for key, x in groups.items() if x.size < MIN_GROUP)
    if small:
        (model, layer, _, _), variant = small[0]
        need = "seeds (`sae.seeds`)" if contrast.unit == "SAEs" else contrast.unit
        return Estimate(value, math.nan, math.nan, n,
                        f"{where}; no CI: {len(small)} group(s) have fewer than {MIN_GROUP} {contrast.unit} "
                        f"(e.g. {model} layer {layer} {variant}); needs at least {MIN_GROUP} {need} per variant")
    boot = contrast.stat({key: bootstrap_means(x, n_boot, rng_for(seed, "findings", claim.id, *key[0], key[1]))
                          for key, x in groups.items()})
    lo, hi = percentile_ci(boot, CI_LEVEL)
    return Estimate(value, lo, hi, n, f"{where}; {n_boot} bootstrap resamples within each (cell, variant)")


SCHEMA = pa.schema([
    pa.field("id", pa.string()), pa.field("claim", pa.string()), pa.field("paper", pa.string()),
    pa.field("statistic", pa.string()), pa.field("rule", pa.string()), pa.field("value", pa.float64()),
    pa.field("ci_lo", pa.float64()), pa.field("ci_hi", pa.float64()), pa.field("n", pa.int64()),
    pa.field("verdict", pa.string()), pa.field("note", pa.string()),
])


def findings(con: duckdb.DuckDBPyConnection, seed: int, *, n_boot: int = 1000,
             claims: tuple[Claim, ...] = CLAIMS) -> pa.Table:
    """One row per claim, in declaration order, from a results database's tables and views."""
    rows = []
    for c in claims:
        e = estimate(con, c, seed, n_boot)
        rows.append({"id": c.id, "claim": c.claim, "paper": c.paper, "statistic": c.statistic, "rule": c.rule.text(),
                     "value": e.value, "ci_lo": e.ci_lo, "ci_hi": e.ci_hi, "n": e.n,
                     "verdict": c.rule.verdict(e.ci_lo, e.ci_hi), "note": e.note})
    return pa.Table.from_pylist(rows, schema=SCHEMA)
