"""Small batch statistics used by the trainer: total variance and the geometric median."""

from __future__ import annotations

from typing import Any

import torch


def total_variance(x: torch.Tensor) -> torch.Tensor:
    """sum_n ||x_n - mean(x)||^2 (float32 scalar): the FVU denominator over one batch."""
    xf = x.to(torch.float32)
    return sum_of_squares(xf - xf.mean(dim=0))


def sum_of_squares(x: torch.Tensor) -> torch.Tensor:
    """sum of x**2 over all entries (a scalar); differentiable, with a one-pass backward
    (2 * grad * x) instead of autograd's three passes through ``pow``."""
    out: torch.Tensor = _SumOfSquares.apply(x)
    return out


class _SumOfSquares(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        flat = x.reshape(-1)
        return torch.dot(flat, flat)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return x * (2 * grad)


def geometric_median(x: torch.Tensor, max_iter: int = 200, tol: float = 1e-7) -> torch.Tensor:
    """Point minimising the sum of Euclidean distances to the rows of x (Weiszfeld, float64).

    Used to initialise b_dec: unlike the mean it is not dragged by the few tokens (e.g. the first
    token of a context) whose residual-stream norm is orders of magnitude above the rest.
    """
    pts = x.to(torch.float64)
    y = pts.mean(dim=0)
    for _ in range(max_iter):
        dist = torch.linalg.vector_norm(pts - y, dim=1).clamp_min(1e-12)
        w = 1.0 / dist
        y_new = (w.unsqueeze(1) * pts).sum(dim=0) / w.sum()
        shift = torch.linalg.vector_norm(y_new - y)
        y = y_new
        if shift <= tol * (1.0 + torch.linalg.vector_norm(y)):
            break
    return y.to(torch.float32)
