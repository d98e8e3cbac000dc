"""Reconstruction and sparsity metrics as fp64 sufficient statistics.

Why sufficient statistics: the eval set is streamed through in chunks (GPU memory), and the
paper's comparison lives in differences of a few points of explained variance between trained
and random models. A metric that depends on the chunk size (a mean of per-chunk ratios, a
per-chunk mean subtracted before computing variance) would add noise of that size. Every
quantity here is a sum over tokens kept in fp64 (or an int64 count), and ``merge`` is exact up
to fp64 rounding, so the result is the same for any chunking of the same tokens.

The FVU denominator needs the per-dimension mean over the *whole* eval set, which is not known
until the end. It is accumulated with Chan et al.'s parallel update of (count, mean, M2) per
dimension, which is exact algebra (no assumed mean) and, unlike ``sum x^2 - n mean^2``, does not
cancel catastrophically when a dimension's mean is large compared to its spread (residual streams
have such dimensions).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

#: Firing-frequency thresholds for the "ultra-sparse" latent fractions (fraction of eval tokens).
ULTRA_SPARSE_THRESHOLDS: tuple[float, float] = (1e-5, 1e-6)

#: Default window for the training-time dead-latent count (tokens since a latent last fired).
DEAD_WINDOW_TOKENS: int = 10_000_000


@dataclass(frozen=True)
class ReconstructionResult:
    """Reconstruction and sparsity metrics over one eval set (see docs/metrics.md)."""

    n_tokens: int
    d_model: int
    n_latents: int
    fvu: float
    explained_variance: float
    mse: float
    cossim: float
    l2_norm_in: float
    l2_norm_out: float
    l2_ratio: float
    relative_reconstruction_bias: float
    l0: float
    l1: float
    frac_alive: float
    frac_ultra_sparse_1e5: float
    frac_ultra_sparse_1e6: float
    freq_over_1_percent: float
    freq_over_10_percent: float
    firing_counts: np.ndarray = field(repr=False)


def _nan_div(num: float, den: float) -> float:
    return num / den if den != 0 else float("nan")


@dataclass
class ReconstructionStats:
    """Streaming accumulator for :class:`ReconstructionResult`.

    Feed it chunks with :meth:`update`, combine accumulators from several workers with
    :meth:`merge`, read the metrics with :meth:`result`. All sums are fp64 (Python floats are
    IEEE doubles), all counts int64.
    """

    n_tokens: int = 0
    d_model: int | None = None
    n_latents: int | None = None
    # Chan's per-dimension running mean and sum of squared deviations, fp64 [d].
    mean: torch.Tensor | None = None
    m2: torch.Tensor | None = None
    sse: float = 0.0  # sum ||x - x_hat||^2
    cos_sum: float = 0.0  # sum cos(x, x_hat); 0 for tokens where either norm is 0
    norm_in_sum: float = 0.0  # sum ||x||
    norm_out_sum: float = 0.0  # sum ||x_hat||
    ratio_sum: float = 0.0  # sum ||x_hat|| / ||x|| over tokens with ||x|| > 0
    n_ratio: int = 0  # tokens with ||x|| > 0
    dot_sum: float = 0.0  # sum <x, x_hat>
    sq_out_sum: float = 0.0  # sum ||x_hat||^2
    l0_sum: int = 0  # firing slots
    l1_sum: float = 0.0  # sum |values|
    firing_counts: torch.Tensor | None = None  # int64 [n_latents]

    # ------------------------------------------------------------------ updates

    def _check_dims(self, d: int, n_latents: int) -> None:
        if self.d_model is None:
            self.d_model = d
        elif self.d_model != d:
            raise ValueError(f"d_model changed from {self.d_model} to {d}")
        if self.n_latents is None:
            self.n_latents = n_latents
        elif self.n_latents != n_latents:
            raise ValueError(f"n_latents changed from {self.n_latents} to {n_latents}")

    def _merge_moments(self, n_b: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        """Chan et al. (1979) pairwise update of (n, mean, M2)."""
        n_a = self.n_tokens
        if n_a == 0 or self.mean is None or self.m2 is None:
            self.mean, self.m2 = mean_b.clone(), m2_b.clone()
            return
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta.square() * (n_a * n_b / n)

    @torch.no_grad()
    def update(
        self,
        x: torch.Tensor,
        x_hat: torch.Tensor,
        latent_values: torch.Tensor,
        latent_indices: torch.Tensor,
        n_latents: int,
    ) -> None:
        """Add a chunk of tokens.

        ``x`` and ``x_hat``: ``[N, d]`` (any float dtype; promoted to fp64 here).
        ``latent_values``/``latent_indices``: ``[N, k]`` TopK form; a value of exactly 0 is a slot
        that did not fire. ``n_latents``: the dictionary size (needed for the firing counts).
        """
        if x.ndim != 2 or x.shape != x_hat.shape:
            raise ValueError(
                f"x and x_hat must both be [N, d]; got {tuple(x.shape)}, {tuple(x_hat.shape)}"
            )
        if latent_values.shape != latent_indices.shape or latent_values.shape[0] != x.shape[0]:
            raise ValueError(
                f"latents must be [N, k] with N={x.shape[0]}; got values {tuple(latent_values.shape)}, "
                f"indices {tuple(latent_indices.shape)}"
            )
        n, d = x.shape
        self._check_dims(d, n_latents)
        if n == 0:
            return

        x64 = x.detach().to(torch.float64)
        xh64 = x_hat.detach().to(device=x64.device, dtype=torch.float64)

        mean_b = x64.mean(dim=0)
        m2_b = (x64 - mean_b).square().sum(dim=0)
        self._merge_moments(n, mean_b, m2_b)
        self.n_tokens += n

        self.sse += float((x64 - xh64).square().sum())
        norm_in = x64.norm(dim=1)
        norm_out = xh64.norm(dim=1)
        dot = (x64 * xh64).sum(dim=1)
        denom = norm_in * norm_out
        cos = torch.where(denom > 0, dot / torch.where(denom > 0, denom, 1.0), 0.0)
        self.cos_sum += float(cos.sum())
        self.norm_in_sum += float(norm_in.sum())
        self.norm_out_sum += float(norm_out.sum())
        has_norm = norm_in > 0
        self.ratio_sum += float((norm_out[has_norm] / norm_in[has_norm]).sum())
        self.n_ratio += int(has_norm.sum())
        self.dot_sum += float(dot.sum())
        self.sq_out_sum += float(norm_out.square().sum())

        fires = latent_values != 0
        self.l0_sum += int(fires.sum())
        self.l1_sum += float(latent_values.detach().to(torch.float64).abs().sum())
        idx = latent_indices[fires].to(torch.int64)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_latents):
            raise ValueError(f"latent index out of range [0, {n_latents})")
        counts = torch.bincount(idx.cpu(), minlength=n_latents)
        self.firing_counts = counts if self.firing_counts is None else self.firing_counts + counts

    def merge(self, other: ReconstructionStats) -> ReconstructionStats:
        """Fold another accumulator into this one (in place; returns self)."""
        if other.n_tokens == 0:
            return self
        assert other.d_model is not None and other.n_latents is not None
        self._check_dims(other.d_model, other.n_latents)
        assert other.mean is not None and other.m2 is not None
        self._merge_moments(
            other.n_tokens, other.mean.to(torch.float64), other.m2.to(torch.float64)
        )
        self.n_tokens += other.n_tokens
        for name in (
            "sse", "cos_sum", "norm_in_sum", "norm_out_sum", "ratio_sum", "n_ratio",
            "dot_sum", "sq_out_sum", "l0_sum", "l1_sum",
        ):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        assert other.firing_counts is not None
        self.firing_counts = (
            other.firing_counts.clone()
            if self.firing_counts is None
            else self.firing_counts + other.firing_counts
        )
        return self

    # ------------------------------------------------------------------ result

    def result(self) -> ReconstructionResult:
        """The metrics; NaN where a denominator is 0 (no tokens, constant activations)."""
        if self.n_tokens == 0 or self.m2 is None or self.firing_counts is None:
            raise ValueError("no tokens were added")
        assert self.d_model is not None and self.n_latents is not None
        n = self.n_tokens
        total_var = float(self.m2.sum())  # sum_t ||x_t - mean||^2
        fvu = _nan_div(self.sse, total_var)
        counts = self.firing_counts.numpy().astype(np.int64)
        freq = counts / n
        ultra = {}
        for thr in ULTRA_SPARSE_THRESHOLDS:
            # Resolvable only if one firing in n tokens is already below the threshold.
            if n * thr > 1:
                ultra[thr] = float(np.mean((freq > 0) & (freq < thr)))
            else:
                ultra[thr] = float("nan")
        return ReconstructionResult(
            n_tokens=n,
            d_model=self.d_model,
            n_latents=self.n_latents,
            fvu=fvu,
            explained_variance=1.0 - fvu,
            mse=self.sse / (n * self.d_model),
            cossim=self.cos_sum / n,
            l2_norm_in=self.norm_in_sum / n,
            l2_norm_out=self.norm_out_sum / n,
            l2_ratio=_nan_div(self.ratio_sum, self.n_ratio),
            relative_reconstruction_bias=_nan_div(self.sq_out_sum, self.dot_sum),
            l0=self.l0_sum / n,
            l1=self.l1_sum / n,
            frac_alive=float(np.mean(counts > 0)),
            frac_ultra_sparse_1e5=ultra[1e-5],
            frac_ultra_sparse_1e6=ultra[1e-6],
            freq_over_1_percent=float(np.mean(freq > 0.01)),
            freq_over_10_percent=float(np.mean(freq > 0.1)),
            firing_counts=counts,
        )


def dead_fraction(
    tokens_since_fire: torch.Tensor | np.ndarray, window_tokens: int = DEAD_WINDOW_TOKENS
) -> float:
    """Fraction of latents that did not fire in the last ``window_tokens`` training tokens.

    ``tokens_since_fire`` is the trainer's per-latent counter (training tokens seen since the
    latent last fired, or since the start for one that never fired). A latent is dead when the
    counter is >= ``window_tokens``. Counting tokens, not optimizer steps, keeps the number
    comparable across batch sizes. If training saw fewer than ``window_tokens`` tokens no latent
    can be dead by this rule; the caller should record the window it used (the row has a column).
    """
    t = torch.as_tensor(tokens_since_fire)
    if t.numel() == 0:
        raise ValueError("no latents")
    if window_tokens <= 0:
        raise ValueError("window_tokens must be positive")
    return float((t >= window_tokens).to(torch.float64).mean())
