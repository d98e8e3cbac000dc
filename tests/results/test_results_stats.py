"""Resampling statistics and the discriminability comparison on planted data."""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import roc_auc_score

from randsae.autointerp.stats import bootstrap_auroc_ci
from randsae.results.discriminability import compare, discriminability
from randsae.results.stats import (
    RankIndex,
    cluster_bootstrap_auroc,
    percentile_ci,
    permutation_pvalue,
    point_auroc,
    rng_for,
    two_sample_bootstrap,
)


def test_reweighted_auroc_equals_sklearn_with_ties_and_weights():
    rng = np.random.default_rng(1)
    pos = rng.integers(0, 5, 40).astype(float)  # many ties
    neg = rng.integers(0, 5, 30).astype(float)
    idx = RankIndex(pos, neg)
    assert idx.auroc(np.ones((1, 40)), np.ones((1, 30)))[0] == pytest.approx(point_auroc(pos, neg), abs=1e-12)
    wp, wn = rng.integers(0, 3, 40), rng.integers(0, 3, 30)
    expanded = roc_auc_score(np.r_[np.ones(wp.sum()), np.zeros(wn.sum())], np.r_[np.repeat(pos, wp), np.repeat(neg, wn)])
    assert idx.auroc(wp[None].astype(float), wn[None].astype(float))[0] == pytest.approx(expanded, abs=1e-12)


def test_cluster_bootstrap_is_comparable_to_autointerp_stats():
    rng = np.random.default_rng(2)
    latents = np.repeat(np.arange(30), 10)
    labels = np.tile(np.r_[np.ones(6, bool), np.zeros(4, bool)], 30)
    scores = np.where(labels, rng.beta(4, 2, labels.size), rng.beta(2, 4, labels.size))
    lo, hi = percentile_ci(cluster_bootstrap_auroc(labels, scores, latents, 1000, rng_for(0, "x")))
    ref_lo, ref_hi = bootstrap_auroc_ci(labels, scores, groups=latents, n_boot=1000, seed=0)
    point = roc_auc_score(labels, scores)
    assert lo < point < hi
    assert abs(lo - ref_lo) < 0.03 and abs(hi - ref_hi) < 0.03  # same method, different random draws


def test_permutation_pvalue_exact_monte_carlo_and_normal():
    a, b = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    # 6 relabellings; |diff| >= 2 for the observed one and its mirror
    assert permutation_pvalue(a, b, 1000, rng_for(0)) == (pytest.approx(2 / 6), "exact")
    rng = np.random.default_rng(0)
    same, how = permutation_pvalue(rng.normal(size=200), rng.normal(size=200), 500, rng_for(0, "s"))
    far, _ = permutation_pvalue(rng.normal(size=200), rng.normal(2, 1, size=200), 500, rng_for(0, "f"))
    assert how == "Monte Carlo" and same > 0.05 and far == pytest.approx(1 / 501)
    # the normal approximation agrees with Monte Carlo where both apply (skewed data too)
    x, y = rng.exponential(1.0, 3000), rng.exponential(1.05, 3000)
    mc, _ = permutation_pvalue(x, y, 4000, rng_for(0, "mc"))
    approx, how = permutation_pvalue(x, y, 4000, rng_for(0, "mc"), mc_max=1000)
    assert how == "normal approximation" and approx == pytest.approx(mc, abs=0.02)


def test_large_samples_are_subsampled_with_rescaled_ci():
    """m-out-of-n bootstrap: the CI of a 200k-per-side comparison has the width the full
    bootstrap would give (about 2 * 1.96 * sd), and takes about a second."""
    import time

    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 200_000), rng.normal(0.01, 1, 200_000)
    t0 = time.monotonic()
    c = compare(a, b, level="latent", rng=rng_for(0, "big"), n_boot=1000, n_perm=1000)
    elapsed = time.monotonic() - t0
    se = math.sqrt(2 / 200_000)
    assert c.difference_hi - c.difference_lo == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert c.difference_lo < c.difference < c.difference_hi and c.auroc_lo < c.auroc < c.auroc_hi
    assert "normal approximation" in c.note and "subsample" in c.note
    assert elapsed < 20


def test_rng_for_depends_on_labels_not_order():
    assert rng_for(3, "a", 1).random() == rng_for(3, "a", 1).random()
    assert rng_for(3, "a", 1).random() != rng_for(3, "a", 2).random()
    assert rng_for(3, "a").random() != rng_for(4, "a").random()


def test_two_sample_bootstrap_shapes():
    rng = np.random.default_rng(0)
    boot = two_sample_bootstrap(rng.normal(size=50), rng.normal(1, 1, size=70), 100, rng_for(0))
    assert boot.difference.shape == (100,) and boot.auroc.shape == (100,)
    assert 0.6 < np.mean(boot.difference) < 1.4 and np.mean(boot.auroc) < 0.4  # a above b is unlikely


def test_compare_planted_separated_and_not():
    rng = np.random.default_rng(0)
    trained, variant = rng.normal(3, 0.3, 200), rng.normal(1, 0.3, 200)
    sep = compare(trained, variant, level="latent", rng=rng_for(0, "sep"))
    assert sep.separated is True
    assert sep.difference_hi < 0 and sep.p_value < 0.01 and sep.auroc > 0.99 and sep.auroc_lo > 0.95
    a, b = rng.normal(2, 0.3, 200), rng.normal(2, 0.3, 200)
    same = compare(a, b, level="latent", rng=rng_for(0, "same"))
    assert same.separated is False
    assert same.difference_lo < 0 < same.difference_hi and same.p_value > 0.01 and 0.4 < same.auroc < 0.6


def test_compare_one_seed_per_side_has_no_ci():
    c = compare(np.array([0.8]), np.array([0.9]), level="sae", rng=rng_for(0))
    assert c.n_trained == 1 and c.difference == pytest.approx(0.1)
    assert math.isnan(c.difference_lo) and math.isnan(c.p_value) and math.isnan(c.auroc)
    assert c.separated is None and "fewer than 2" in c.note
    nan = compare(np.array([np.nan, 1.0, 2.0]), np.array([1.0, np.inf, 3.0]), level="sae", rng=rng_for(0))
    assert (nan.n_trained, nan.n_variant) == (2, 2)  # non-finite values dropped


def test_discriminability_on_a_planted_observation_table():
    """Two per-latent metrics: entropy separated (N(3,.3) vs N(1,.3)), lookup share not."""
    rng = np.random.default_rng(7)
    rows = []
    for variant in ("trained", "rerandomized", "step0"):
        for _ in range(150):
            rows.append(("m", 2, 8, 32, variant, "latent", "token_entropy", rng.normal(3 if variant == "trained" else 1, 0.3)))
            rows.append(("m", 2, 8, 32, variant, "latent", "token_lookup_share", rng.normal(0.5, 0.2)))
        rows.append(("m", 2, 8, 32, variant, "sae", "explained_variance", 0.8))  # one seed each
    names = ["model", "layer", "expansion", "k", "variant", "level", "metric", "value"]
    con = duckdb.connect()
    con.register("observations", pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)}))
    t = discriminability(con, seed=0, n_boot=500, n_perm=500).to_pylist()
    assert len(t) == 6
    assert {(r["metric"], r["variant"]) for r in t if r["separated"]} == {("token_entropy", "rerandomized"), ("token_entropy", "step0")}
    for r in t:
        if r["metric"] == "token_lookup_share":
            assert r["separated"] is False and 0.35 < r["auroc"] < 0.65
        if r["metric"] == "explained_variance":
            assert r["separated"] is None and math.isnan(r["p_value"])
    assert [r["variant"] for r in t if r["metric"] == "token_entropy"] == ["step0", "rerandomized"]  # canonical order
    again = discriminability(con, seed=0, n_boot=500, n_perm=500).to_pylist()
    assert str(again) == str(t)  # seeded: identical
