"""Resampling statistics for the results tables: bootstrap CIs, permutation p-values, AUROC.

Why a module of its own: the aggregate stage bootstraps AUROCs over tens of thousands of
latents or judged examples, for hundreds of (SAE, scorer) and (layer, metric, variant) cells.
Re-ranking every resample would cost O(n log n) each; instead the rank structure is computed
once (where each positive falls among the sorted negatives) and a resample is a reweighting
(multinomial counts), whose AUROC and mean are then O(n). The point AUROC itself is
scikit-learn's ``roc_auc_score`` (ties count one half); tests check that the reweighted form
agrees with it exactly.

Large samples (an SAE of a big model has 10^5 latents per side): the bootstrap runs on a
random subsample with the same fraction ``f`` of each side (at most ``RESAMPLE_CAP`` on the
larger side) and its deviations are rescaled by ``sqrt(f)`` (the m-out-of-n bootstrap: the
spread of a smooth two-sample statistic scales as 1/sqrt(n) on both sides at once); the
permutation test uses the normal approximation to the permutation distribution, with its exact
finite-population mean and variance, once the pooled sample exceeds ``PERMUTATION_MC_MAX``.
Both are standard large-sample forms of the same tests, and they keep the aggregate step's
cost bounded whatever the dictionary size.

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
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from randsae.autointerp.stats import percentile_ci as percentile_ci  # one definition, shared

#: resamples handled at once: bounds memory at about chunk * n * 8 bytes per array.
CHUNK = 32
#: largest side resampled in full by the bootstrap (see module doc).
RESAMPLE_CAP = 10_000
#: largest pooled sample tested by Monte Carlo permutations; above it, the normal approximation.
PERMUTATION_MC_MAX = 10_000


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
        order = np.argsort(neg, kind="stable")
        # already sorted (the two-sample bootstrap sorts first): no reordering of weights
        self.neg_order: np.ndarray | None = None if np.array_equal(order, np.arange(neg.size)) else order
        sorted_neg = neg[order]
        self.lo = np.searchsorted(sorted_neg, pos, side="left")
        self.hi = np.searchsorted(sorted_neg, pos, side="right")

    def auroc(self, w_pos: np.ndarray, w_neg: np.ndarray) -> np.ndarray:
        """AUROC per row of weights ``w_pos [B, n_pos]``, ``w_neg [B, n_neg]`` (negatives in
        their original order); NaN where a side has zero total weight.

        U = sum_i w_i (W(< p_i) + W(= p_i) / 2) = sum_i w_i (C[lo_i] + C[hi_i]) / 2 with C the
        cumulative negative weight in sorted order. Weights are resampling counts: float32 is
        exact for them and their cumulative sums (< 2^24), and halves the memory traffic.
        """
        wn = w_neg if self.neg_order is None else w_neg[:, self.neg_order]
        cw = np.empty((wn.shape[0], self.n_neg + 1), dtype=np.float32)
        cw[:, 0] = 0
        np.cumsum(wn, axis=1, dtype=np.float32, out=cw[:, 1:])
        two_u = cw[:, self.lo]
        two_u += cw[:, self.hi]
        u = 0.5 * np.einsum("ij,ij->i", w_pos.astype(np.float64), two_u.astype(np.float64))
        denom = w_pos.sum(axis=1, dtype=np.float64) * wn.sum(axis=1, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, u / denom, np.nan)


def _counts(rng: np.random.Generator, n: int, b: int) -> np.ndarray:
    """Multinomial resampling counts [b, n] (float32): how often each of n items is drawn in
    each of b resamples of size n with replacement."""
    draws = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.float32)


def bootstrap_means(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_boot`` resamples of ``x`` (with replacement, size ``x.size``), in chunks
    of ``CHUNK`` resamples so memory stays at about ``CHUNK * x.size`` floats."""
    x = np.asarray(x, dtype=np.float64)
    out = [_counts(rng, x.size, min(CHUNK, n_boot - start)).astype(np.float64) @ x / x.size
           for start in range(0, n_boot, CHUNK)]
    return np.concatenate(out) if out else np.empty(0)


@dataclass(frozen=True)
class TwoSampleBootstrap:
    """Bootstrap distributions of mean(b) - mean(a) and of AUROC(a above b)."""

    difference: np.ndarray
    auroc: np.ndarray


def two_sample_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int, rng: np.random.Generator,
                         with_auroc: bool = True) -> TwoSampleBootstrap:
    """Stratified bootstrap: each sample is resampled within itself (sizes fixed)."""
    a, b = np.sort(a), np.sort(b)  # order is irrelevant to both statistics; sorted b skips a gather
    diffs, aucs = [], []
    index = RankIndex(a, b) if with_auroc else None
    for start in range(0, n_boot, CHUNK):
        m = min(CHUNK, n_boot - start)
        wa, wb = _counts(rng, a.size, m), _counts(rng, b.size, m)
        diffs.append(wb.astype(np.float64) @ b / b.size - wa.astype(np.float64) @ a / a.size)
        if index is not None:
            aucs.append(index.auroc(wa, wb))
    return TwoSampleBootstrap(
        difference=np.concatenate(diffs) if diffs else np.empty(0),
        auroc=np.concatenate(aucs) if aucs else np.full(n_boot, np.nan),
    )


def subsample_fraction(n_a: int, n_b: int, cap: int = RESAMPLE_CAP) -> float:
    """The fraction f of each side that the bootstrap resamples (1 when both fit the cap)."""
    return min(1.0, cap / max(n_a, n_b, 1))


def subsample(x: np.ndarray, f: float, rng: np.random.Generator) -> np.ndarray:
    if f >= 1:
        return x
    return rng.choice(x, size=max(2, round(x.size * f)), replace=False)


def rescaled_ci(full: float, sub: float, boot: np.ndarray, f: float, level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of a statistic whose bootstrap ran on an f-subsample (m-out-of-n):
    ``full + sqrt(f) * (quantile - sub)``; the plain percentile CI when f = 1."""
    lo, hi = percentile_ci(boot, level)
    if f >= 1:
        return (lo, hi)
    r = math.sqrt(f)
    return (full + r * (lo - sub), full + r * (hi - sub))


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


def permutation_pvalue(a: np.ndarray, b: np.ndarray, n_perm: int, rng: np.random.Generator,
                       mc_max: int = PERMUTATION_MC_MAX) -> tuple[float, str]:
    """Two-sided permutation p-value of mean(b) - mean(a), and the method used.

    ``exact``: every relabelling enumerated, when there are at most ``n_perm`` of them (a
    handful of seeds). ``Monte Carlo``: ``(1 + hits) / (1 + n_perm)`` random relabellings,
    never 0. ``normal approximation`` (pooled size above ``mc_max``): the permutation
    distribution of the difference is that of a sample drawn without replacement from the
    pooled values, whose mean (0) and variance are known exactly; by the finite-population
    central limit theorem it is normal for large samples.
    """
    x = np.concatenate([a, b])
    n, na = x.size, a.size
    nb = n - na
    if na == 0 or nb == 0:
        return (math.nan, "")
    observed = abs(b.mean() - a.mean())
    tol = 1e-12 * max(1.0, float(np.abs(x).max()))
    total = x.sum()

    def stat(sum_a: np.ndarray) -> np.ndarray:
        return np.abs((total - sum_a) / nb - sum_a / na)

    if n <= 64 and math.comb(n, na) <= n_perm:  # (math.comb of a large n is itself expensive)
        sums = np.array([x[list(c)].sum() for c in itertools.combinations(range(n), na)])
        return (float(np.mean(stat(sums) >= observed - tol)), "exact")
    if n > mc_max:
        var_sum_a = na * nb / (n - 1) * x.var()
        sd = (1 / na + 1 / nb) * math.sqrt(var_sum_a)
        if sd == 0:
            return (1.0 if observed <= tol else 0.0, "normal approximation")
        return (float(2 * norm.sf(observed / sd)), "normal approximation")
    hits = 0
    for start in range(0, n_perm, CHUNK):
        m = min(CHUNK, n_perm - start)
        perm = rng.permuted(np.broadcast_to(x, (m, n)), axis=1)
        hits += int((stat(perm[:, :na].sum(axis=1)) >= observed - tol).sum())
    return ((1 + hits) / (1 + n_perm), "Monte Carlo")


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
