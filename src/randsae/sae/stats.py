"""Small batch statistics used by the trainer: total variance and the geometric median."""

from __future__ import annotations

import torch


def total_variance(x: torch.Tensor) -> torch.Tensor:
    """sum_n ||x_n - mean(x)||^2 (float32 scalar): the FVU denominator over one batch."""
    xf = x.to(torch.float32)
    return (xf - xf.mean(dim=0)).pow(2).sum()


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
