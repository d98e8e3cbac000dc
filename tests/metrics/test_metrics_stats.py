"""Reconstruction statistics: chunk invariance, exact limits, hand-computed cases."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from randsae.metrics.stats import ReconstructionStats, dead_fraction


def _random_set(n: int = 1000, d: int = 16, n_latents: int = 40, k: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # Large per-dimension offsets (as in residual streams) stress the variance computation.
    offset = torch.randn(d, generator=g) * 50.0
    x = (torch.randn(n, d, generator=g) * torch.rand(d, generator=g) + offset).float()
    x_hat = x + 0.3 * torch.randn(n, d, generator=g)
    scores = torch.rand(n, n_latents, generator=g)
    values, indices = scores.topk(k, dim=-1)
    values[torch.rand(n, k, generator=g) < 0.2] = 0.0  # some selected slots do not fire
    return x, x_hat, values, indices, n_latents


def _fields(result) -> dict[str, object]:
    return {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}


def _assert_same(a, b, rel: float = 1e-12) -> None:
    fa, fb = _fields(a), _fields(b)
    for name, va in fa.items():
        vb = fb[name]
        if isinstance(va, np.ndarray):
            np.testing.assert_array_equal(va, vb, err_msg=name)
        elif isinstance(va, float) and math.isnan(va):
            assert math.isnan(vb), name
        else:
            assert va == pytest.approx(vb, rel=rel, abs=1e-15), name


def test_chunk_invariance() -> None:
    x, x_hat, values, indices, m = _random_set()
    whole = ReconstructionStats()
    whole.update(x, x_hat, values, indices, m)

    chunked = ReconstructionStats()
    start = 0
    for size in (1, 7, 100, 392, 500):  # sums to 1000
        sl = slice(start, start + size)
        chunked.update(x[sl], x_hat[sl], values[sl], indices[sl], m)
        start += size
    assert start == len(x)
    _assert_same(whole.result(), chunked.result())

    # Same through merge of separate accumulators (parallel workers), in a different order.
    parts = []
    for sl in (slice(600, 1000), slice(0, 3), slice(3, 600)):
        s = ReconstructionStats()
        s.update(x[sl], x_hat[sl], values[sl], indices[sl], m)
        parts.append(s)
    merged = ReconstructionStats()
    for s in parts:
        merged.merge(s)
    _assert_same(whole.result(), merged.result())


def test_perfect_reconstruction_gives_ev_one() -> None:
    x, _, values, indices, m = _random_set()
    s = ReconstructionStats()
    s.update(x, x.clone(), values, indices, m)
    r = s.result()
    assert r.explained_variance == 1.0 and r.fvu == 0.0 and r.mse == 0.0
    assert r.cossim == pytest.approx(1.0, abs=1e-12)
    assert r.l2_ratio == pytest.approx(1.0, abs=1e-12)
    assert r.relative_reconstruction_bias == pytest.approx(1.0, abs=1e-12)


def test_predicting_the_whole_set_mean_gives_ev_zero() -> None:
    x, _, values, indices, m = _random_set()
    mean = x.double().mean(dim=0)
    s = ReconstructionStats()
    for sl in (slice(0, 250), slice(250, 1000)):
        s.update(x[sl], mean.expand(sl.stop - sl.start, -1), values[sl], indices[sl], m)
    assert s.result().explained_variance == pytest.approx(0.0, abs=1e-12)

    # Predicting each chunk's own mean does better than 0: the denominator must use the
    # whole-set mean, not a per-chunk one (a per-chunk denominator would report EV 0 here).
    s2 = ReconstructionStats()
    for sl in (slice(0, 250), slice(250, 1000)):
        chunk_mean = x[sl].double().mean(dim=0)
        s2.update(x[sl], chunk_mean.expand(sl.stop - sl.start, -1), values[sl], indices[sl], m)
    assert s2.result().explained_variance > 0.0


def test_hand_computed_case() -> None:
    # x1 = (1, 0), x2 = (3, 4); x_hat1 = (1, 1), x_hat2 = (3, 0).
    # mean = (2, 2); sum ||x - mean||^2 = (1 + 4) + (1 + 4) = 10
    # sse = ||(0, -1)||^2 + ||(0, 4)||^2 = 1 + 16 = 17 -> fvu 1.7, EV -0.7, mse 17 / 4 = 4.25
    # cos1 = 1 / (1 * sqrt 2); cos2 = 9 / (5 * 3) = 0.6 -> cossim (1/sqrt2 + 0.6) / 2
    # ||x|| = 1, 5 (mean 3); ||x_hat|| = sqrt 2, 3 (mean (sqrt2 + 3) / 2)
    # l2 ratio = (sqrt2 / 1 + 3 / 5) / 2; rel. bias = (2 + 9) / (1 + 9) = 1.1
    # latents (4 latents, k = 2): token 1 values (0.5, 0.0) at (3, 1); token 2 (2.0, -1.0) at (3, 0)
    # L0 = (1 + 2) / 2 = 1.5 (the 0.0 slot does not fire); L1 = (0.5 + 3.0) / 2 = 1.75
    # counts = [1, 0, 0, 2]; alive 2 / 4; freqs [0.5, 0, 0, 1] -> over 1% and 10%: 0.5
    x = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    x_hat = torch.tensor([[1.0, 1.0], [3.0, 0.0]])
    values = torch.tensor([[0.5, 0.0], [2.0, -1.0]])
    indices = torch.tensor([[3, 1], [3, 0]])
    s = ReconstructionStats()
    s.update(x, x_hat, values, indices, 4)
    r = s.result()
    sqrt2 = math.sqrt(2.0)
    assert r.n_tokens == 2 and r.d_model == 2 and r.n_latents == 4
    assert r.fvu == pytest.approx(1.7, rel=1e-14)
    assert r.explained_variance == pytest.approx(-0.7, rel=1e-14)
    assert r.mse == pytest.approx(4.25, rel=1e-14)
    assert r.cossim == pytest.approx((1 / sqrt2 + 0.6) / 2, rel=1e-14)
    assert r.l2_norm_in == pytest.approx(3.0, rel=1e-14)
    assert r.l2_norm_out == pytest.approx((sqrt2 + 3) / 2, rel=1e-14)
    assert r.l2_ratio == pytest.approx((sqrt2 + 0.6) / 2, rel=1e-14)
    assert r.relative_reconstruction_bias == pytest.approx(1.1, rel=1e-14)
    assert r.l0 == 1.5 and r.l1 == 1.75
    np.testing.assert_array_equal(r.firing_counts, [1, 0, 0, 2])
    assert r.frac_alive == 0.5
    assert r.freq_over_1_percent == 0.5 and r.freq_over_10_percent == 0.5
    # 2 tokens cannot resolve frequencies below 1e-5: reported as NaN, not as 0.
    assert math.isnan(r.frac_ultra_sparse_1e5) and math.isnan(r.frac_ultra_sparse_1e6)


def test_zero_norm_tokens() -> None:
    # A zero x_hat counts cosine 0; a zero x is left out of the l2 ratio.
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    x_hat = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    s = ReconstructionStats()
    s.update(x, x_hat, torch.ones(2, 1), torch.zeros(2, 1, dtype=torch.long), 1)
    r = s.result()
    assert r.cossim == 0.0
    assert r.l2_ratio == 0.0  # only token 2 counts: 0 / 1


def test_ultra_sparse_fractions() -> None:
    # 2,000,001 tokens, 4 latents, k = 2. Slot 0: latent 2 fires everywhere. Slot 1: latent 3
    # with value 0 (never fires) except latent 0 once (freq ~5e-7) and latent 1 on 10 tokens
    # (freq ~5e-6). Below 1e-5 among firing latents: {0, 1} -> 2/4; below 1e-6: {0} -> 1/4.
    n = 2_000_001
    values = torch.zeros(n, 2)
    indices = torch.empty(n, 2, dtype=torch.long)
    values[:, 0], indices[:, 0] = 1.0, 2
    indices[:, 1] = 3
    indices[5, 1], values[5, 1] = 0, 0.7
    indices[100:110, 1], values[100:110, 1] = 1, 0.3
    x = torch.zeros(n, 1)
    x[::2] = 1.0
    s = ReconstructionStats()
    for sl in (slice(0, 1_000_000), slice(1_000_000, n)):
        s.update(x[sl], x[sl], values[sl], indices[sl], 4)
    r = s.result()
    np.testing.assert_array_equal(r.firing_counts, [1, 10, n, 0])
    assert r.frac_alive == 0.75
    assert r.frac_ultra_sparse_1e5 == 0.5
    assert r.frac_ultra_sparse_1e6 == 0.25
    assert r.l0 == pytest.approx((n + 11) / n, rel=1e-14)
    assert r.l1 == pytest.approx((n + 0.7 + 10 * 0.3) / n, rel=1e-12)


def test_dead_fraction() -> None:
    assert dead_fraction(torch.tensor([0, 5, 10, 20]), window_tokens=10) == 0.5
    assert dead_fraction(np.array([0, 9_999_999, 10_000_000])) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        dead_fraction(torch.tensor([1]), window_tokens=0)


def test_shape_errors() -> None:
    s = ReconstructionStats()
    x = torch.zeros(3, 2)
    v, i = torch.ones(3, 1), torch.zeros(3, 1, dtype=torch.long)
    with pytest.raises(ValueError):
        s.update(x, torch.zeros(3, 3), v, i, 4)
    with pytest.raises(ValueError):
        s.update(x, x, v, i + 7, 4)
    s.update(x, x, v, i, 4)
    with pytest.raises(ValueError):
        s.update(x, x, v, i, 5)
    with pytest.raises(ValueError):
        ReconstructionStats().result()
