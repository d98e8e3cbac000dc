"""Abstractness measures on planted latents: a one-token latent is fully explained by the token
(entropy 0, lookup share 1, single-token), a latent firing on random tokens is not (entropy
~ ln #distinct, share ~ 0); the sufficient-statistics formula equals a brute-force R^2 and does
not depend on how latents are chunked."""

from __future__ import annotations

import math

import numpy as np
import pytest

from randsae import abstractness as ab


def _share(latent, ids, vals, token_counts, n_latents, n_positions):
    terms = ab.token_terms(latent, ids, vals, token_counts, n_latents)
    sums = np.bincount(latent, weights=vals, minlength=n_latents)
    sumsq = np.bincount(latent, weights=vals * vals, minlength=n_latents)
    return ab.token_lookup_share(terms.explained, sums, sumsq, n_positions), terms


@pytest.fixture
def corpus():
    rng = np.random.default_rng(0)
    return rng.integers(0, 50, 20_000)  # token id per position


def test_latent_on_one_token_id_is_fully_token_explained(corpus):
    pos = np.flatnonzero(corpus == 7)
    vals = np.full(pos.shape[0], 2.5)
    counts = np.bincount(corpus, minlength=50)
    share, terms = _share(np.zeros(pos.shape[0], np.int64), corpus[pos], vals, counts, 1, corpus.shape[0])
    assert share[0] == pytest.approx(1.0, abs=1e-12)
    assert terms.top_token[0] == 7
    assert ab.single_token(ab.top_token_share(terms))[0]
    assert ab.token_entropy(corpus[pos], vals) == 0.0


def test_latent_on_random_tokens_is_not_token_explained(corpus):
    rng = np.random.default_rng(1)
    pos = np.sort(rng.choice(corpus.shape[0], 4000, replace=False))
    vals = rng.uniform(0.5, 1.5, pos.shape[0])
    counts = np.bincount(corpus, minlength=50)
    share, terms = _share(np.zeros(pos.shape[0], np.int64), corpus[pos], vals, counts, 1, corpus.shape[0])
    assert 0 <= share[0] < 0.02
    assert not ab.single_token(ab.top_token_share(terms))[0]
    distinct = np.unique(corpus[pos]).shape[0]
    assert ab.token_entropy(corpus[pos], vals) == pytest.approx(math.log(distinct), abs=0.02)


def test_entropy_exact_values():
    assert ab.token_entropy([1, 2, 3, 4], [1.0, 1.0, 1.0, 1.0]) == pytest.approx(math.log(4))
    assert ab.token_entropy([1, 1, 2, 2], [1.0, 0.0, 0.0, 1.0]) == pytest.approx(math.log(2))
    assert ab.token_entropy([5, 5, 9], [3.0, 1.0, 0.0]) == 0.0  # zero activation carries no mass
    assert math.isnan(ab.token_entropy([1, 2], [0.0, 0.0]))


def test_share_matches_brute_force_r2_and_is_chunk_invariant(corpus):
    rng = np.random.default_rng(2)
    n_lat, n = 6, corpus.shape[0]
    dense = np.where(rng.random((n, n_lat)) < 0.1, rng.uniform(0, 2, (n, n_lat)), 0.0)
    dense[:, 2] = np.where(corpus % 5 == 0, corpus / 10.0, 0.0)  # token-determined, not constant
    dense[:, 5] = 0.0  # never fires
    rows, lat = np.nonzero(dense)
    vals = dense[rows, lat]
    counts = np.bincount(corpus, minlength=50)
    share, _ = _share(lat, corpus[rows], vals, counts, n_lat, n)
    for j in range(n_lat - 1):
        y = dense[:, j]
        means = np.bincount(corpus, weights=y, minlength=50) / np.maximum(counts, 1)
        r2 = 1 - ((y - means[corpus]) ** 2).sum() / ((y - y.mean()) ** 2).sum()
        assert share[j] == pytest.approx(r2, abs=1e-9)
    assert share[2] == pytest.approx(1.0)
    assert math.isnan(share[5])
    # latents in two ranges, as the examples stage scans them: same numbers
    order = np.argsort(lat, kind="stable")
    lat, rows, vals = lat[order], rows[order], vals[order]
    cut = np.searchsorted(lat, 3)
    lo = ab.token_terms(lat[:cut], corpus[rows[:cut]], vals[:cut], counts, 3)
    hi = ab.token_terms(lat[cut:] - 3, corpus[rows[cut:]], vals[cut:], counts, 3)
    whole = ab.token_terms(lat, corpus[rows], vals, counts, n_lat)
    assert np.allclose(np.r_[lo.explained, hi.explained], whole.explained, rtol=1e-12)
    assert np.array_equal(np.r_[lo.top_token, hi.top_token], whole.top_token)


def test_single_token_rule_threshold():
    assert ab.single_token(np.array([0.9, 0.899, np.nan, 1.0])).tolist() == [True, False, False, True]
