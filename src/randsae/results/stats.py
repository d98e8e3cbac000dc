"""Resampling statistics for the results tables: bootstrap CIs, permutation p-values, AUROC.

Why a module of its own: the aggregate stage bootstraps AUROCs over tens of thousands of
latents or judged examples, for hundreds of (SAE, scorer) and (layer, metric, variant) cells.
Re-ranking every resample would cost O(n log n) each; instead the rank structure is computed
once (where each positive falls among the sorted negatives) and a resample is a reweighting
(multinomial counts), whose AUROC and mean are then O(n). The point AUROC itself is
scikit-learn's ``roc_auc_score`` (ties count one half); tests check that the reweighted form
agrees with it exactly.

All randomness comes from ``rng_for(seed, *labels)``: a generator seeded by the config seed and
a stable hash of what is being computed, so a cell's result does not depend on which other
cells exist or in which order they are computed.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

#: resamples handled at once: bounds memory at about chunk * n * 8 bytes per array.
CHUNK = 32


def rng_for(seed: int, *labels: object) -> np.random.Generator:
    """A generator determined by ``seed`` and the labels (not by call order)."""
    tag = zlib.crc32("\x1f".join(map(str, labels)).encode())
    return np.random.default_rng([int(seed), tag])


def point_auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a positive scores above a negative), ties one half; NaN when a side is empty."""
    if pos.size == 0 or neg.size == 0:
        return math.nan
    y = np.concatenate([np.ones(pos.size, bool), np.zeros(neg.size, bool)])
    return float(roc_auc_score(y, np.concatenate([pos, neg])))


class RankIndex:
    """Where each positive falls among the sorted negatives; AUROC of any weighting in O(n)."""

    def __init__(self, pos: np.ndarray, neg: np.ndarray):
        self.n_pos, self.n_neg = pos.size, neg.size
        self.neg_order = np.argsort(neg, kind="stable")
        sorted_neg = neg[self.neg_order]
        self.lo = np.searchsorted(sorted_neg, pos, side="left")
        self.hi = np.searchsorted(sorted_neg, pos, side="right")

    def auroc(self, w_pos: np.ndarray, w_neg: np.ndarray) -> np.ndarray:
        """AUROC per row of weights ``w_pos [B, n_pos]``, ``w_neg [B, n_neg]`` (negatives in
        their original order); NaN where a side has zero total weight."""
        wn = w_neg[:, self.neg_order]
        cw = np.zeros((wn.shape[0], self.n_neg + 1))
        np.cumsum(wn, axis=1, out=cw[:, 1:])
        below = cw[:, self.lo]
        ties = cw[:, self.hi] - below
        u = (w_pos * (below + 0.5 * ties)).sum(axis=1)
        denom = w_pos.sum(axis=1) * wn.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, u / denom, np.nan)


def _counts(rng: np.random.Generator, n: int, b: int) -> np.ndarray:
    """Multinomial resampling counts [b, n]: how often each of n items is drawn in each of b
    resamples of size n with replacement."""
    draws = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def percentile_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return (math.nan, math.nan)
    a = (1 - level) / 2
    lo, hi = np.quantile(v, [a, 1 - a])
    return (float(lo), float(hi))


@dataclass(frozen=True)
class TwoSampleBootstrap:
    """Bootstrap distributions of mean(b) - mean(a) and of AUROC(a above b)."""

    difference: np.ndarray
    auroc: np.ndarray


def two_sample_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int, rng: np.random.Generator,
                         with_auroc: bool = True) -> TwoSampleBootstrap:
    """Stratified bootstrap: each sample is resampled within itself (sizes fixed)."""
    diffs, aucs = [], []
    index = RankIndex(a, b) if with_auroc else None
    for start in range(0, n_boot, CHUNK):
        m = min(CHUNK, n_boot - start)
        wa, wb = _counts(rng, a.size, m), _counts(rng, b.size, m)
        diffs.append(wb @ b / b.size - wa @ a / a.size)
        if index is not None:
            aucs.append(index.auroc(wa, wb))
    return TwoSampleBootstrap(
        difference=np.concatenate(diffs) if diffs else np.empty(0),
        auroc=np.concatenate(aucs) if aucs else np.full(len(diffs), np.nan),
    )


def cluster_bootstrap_auroc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray,
                            n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """AUROC bootstrap that resamples whole groups (latents): the examples of one latent share
    an explanation and are not independent, so the latent is the unit of resampling."""
    labels = labels.astype(bool)
    codes = np.unique(groups, return_inverse=True)[1].ravel()
    n_groups = int(codes.max()) + 1 if codes.size else 0
    pos, neg = scores[labels], scores[~labels]
    if n_groups == 0 or pos.size == 0 or neg.size == 0:
        return np.full(n_boot, np.nan)
    index = RankIndex(pos, neg)
    pos_codes, neg_codes = codes[labels], codes[~labels]
    out = []
    for start in range(0, n_boot, CHUNK):
        m = min(CHUNK, n_boot - start)
        w = _counts(rng, n_groups, m)
        out.append(index.auroc(w[:, pos_codes], w[:, neg_codes]))
    return np.concatenate(out) if out else np.empty(0)


def permutation_pvalue(a: np.ndarray, b: np.ndarray, n_perm: int, rng: np.random.Generator) -> float:
    """Two-sided permutation p-value of mean(b) - mean(a).

    Exact (every relabelling enumerated) when there are at most ``n_perm`` relabellings, as
    with a handful of seeds; otherwise Monte Carlo with ``(1 + hits) / (1 + n_perm)``, which
    never returns 0.
    """
    x = np.concatenate([a, b])
    n, na = x.size, a.size
    if na == 0 or na == n:
        return math.nan
    total = x.sum()
    observed = abs(b.mean() - a.mean())
    tol = 1e-12 * max(1.0, float(np.abs(x).max()))

    def stat(sum_a: np.ndarray) -> np.ndarray:
        return np.abs((total - sum_a) / (n - na) - sum_a / na)

    if math.comb(n, na) <= n_perm:
        sums = np.array([x[list(c)].sum() for c in itertools.combinations(range(n), na)])
        return float(np.mean(stat(sums) >= observed - tol))
    hits = 0
    for start in range(0, n_perm, CHUNK):
        m = min(CHUNK, n_perm - start)
        perm = rng.permuted(np.broadcast_to(x, (m, n)), axis=1)
        hits += int((stat(perm[:, :na].sum(axis=1)) >= observed - tol).sum())
    return (1 + hits) / (1 + n_perm)


def cohens_d(a: np.ndarray, b: np.ndarray) -> float:
    """(mean(b) - mean(a)) / pooled standard deviation; NaN with fewer than 2 per side or no
    spread."""
    if a.size < 2 or b.size < 2:
        return math.nan
    pooled = ((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2)
    if not pooled > 0:
        return math.nan
    return float((b.mean() - a.mean()) / math.sqrt(pooled))


def finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return v[np.isfinite(v)]
