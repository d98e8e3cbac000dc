"""Scoring statistics: AUROC with bootstrap CI, balanced accuracy, precision, recall.

Definitions (docs/autointerp.md says the same):

- AUROC from the judge's P("1") per example against the true label (activating = 1), with
  ties counted as one half (the Mann-Whitney statistic; equal to scikit-learn's
  ``roc_auc_score``). NaN when only one class is present.
- Prediction = P("1") > 0.5. TPR = recall = TP / (TP + FN), TNR = TN / (TN + FP),
  balanced accuracy = (TPR + TNR) / 2 (as in delphi), precision = TP / (TP + FP) (NaN with no
  positive predictions).
- Failed examples (no probability) are excluded from every statistic and counted.
- Bootstrap 95% CI (percentile method, seeded): per latent, examples are resampled; pooled
  over an SAE, whole latents are resampled (a cluster bootstrap), because examples of one
  latent share an explanation and are not independent. Resamples with one class are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata


def _arrays(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must be 1-D of equal length")
    return y, s


def auroc(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN if a class is missing."""
    y, s = _arrays(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _auroc_rows(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """AUROC of each row of [n_boot, n] label/score matrices (NaN where a class is missing)."""
    n_pos = y.sum(axis=1)
    n_neg = y.shape[1] - n_pos
    ranks = rankdata(s, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = ((ranks * y).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), a, np.nan)


def bootstrap_auroc_ci(
    labels: Sequence[bool] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the AUROC; resamples whole ``groups`` when given."""
    y, s = _arrays(labels, scores)
    if y.size == 0 or y.all() or not y.any() or n_boot <= 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    if groups is None:
        idx = rng.integers(0, y.size, size=(n_boot, y.size))
        values = _auroc_rows(y[idx], s[idx])
    else:
        g = np.asarray(groups)
        if g.shape != y.shape:
            raise ValueError("groups must align with labels")
        members = [np.flatnonzero(g == u) for u in np.unique(g)]
        values = np.empty(n_boot)
        for b in range(n_boot):
            pick = rng.integers(0, len(members), size=len(members))
            rows = np.concatenate([members[k] for k in pick])
            values[b] = auroc(y[rows], s[rows])
    return percentile_ci(values, level)


def percentile_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite bootstrap values (NaN, NaN when there are none)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return (math.nan, math.nan)
    a = (1 - level) / 2
    lo, hi = np.quantile(v, [a, 1 - a])
    return (float(lo), float(hi))


@dataclass(frozen=True)
class BinaryMetrics:
    n: int
    n_pos: int
    n_neg: int
    tpr: float
    tnr: float
    balanced_accuracy: float
    accuracy: float
    precision: float
    recall: float


def _div(a: float, b: float) -> float:
    return a / b if b else math.nan


def binary_metrics(
    labels: Sequence[bool] | np.ndarray, probs: Sequence[float] | np.ndarray, threshold: float = 0.5
) -> BinaryMetrics:
    """Metrics of the predictions ``prob > threshold``."""
    y, p = _arrays(labels, probs)
    pred = p > threshold
    tp = int((pred & y).sum())
    tn = int((~pred & ~y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    tpr, tnr = _div(tp, tp + fn), _div(tn, tn + fp)
    return BinaryMetrics(
        n=int(y.size),
        n_pos=tp + fn,
        n_neg=tn + fp,
        tpr=tpr,
        tnr=tnr,
        balanced_accuracy=(tpr + tnr) / 2,
        accuracy=_div(tp + tn, y.size),
        precision=_div(tp, tp + fp),
        recall=tpr,
    )


@dataclass(frozen=True)
class ScoreSummary:
    """Everything reported for one latent, or pooled over the latents of one SAE."""

    n: int
    n_pos: int
    n_neg: int
    n_failed: int
    auroc: float
    auroc_lo: float
    auroc_hi: float
    balanced_accuracy: float
    accuracy: float
    precision: float
    recall: float
    tpr: float
    tnr: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    labels: Sequence[bool],
    probs: Sequence[float | None],
    *,
    groups: Sequence[Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> ScoreSummary:
    """AUROC (+ bootstrap CI) and threshold metrics; ``None`` probabilities count as failed."""
    keep = [i for i, p in enumerate(probs) if p is not None and math.isfinite(p)]
    y = np.asarray([labels[i] for i in keep], dtype=bool)
    p = np.asarray([probs[i] for i in keep], dtype=np.float64)
    g = None if groups is None else np.asarray([groups[i] for i in keep])
    m = binary_metrics(y, p)
    lo, hi = bootstrap_auroc_ci(y, p, groups=g, n_boot=n_boot, level=level, seed=seed)
    return ScoreSummary(
        n=m.n,
        n_pos=m.n_pos,
        n_neg=m.n_neg,
        n_failed=len(probs) - len(keep),
        auroc=auroc(y, p),
        auroc_lo=lo,
        auroc_hi=hi,
        balanced_accuracy=m.balanced_accuracy,
        accuracy=m.accuracy,
        precision=m.precision,
        recall=m.recall,
        tpr=m.tpr,
        tnr=m.tnr,
    )
