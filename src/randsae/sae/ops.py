"""The sparse operations of a TopK SAE, behind one switch.

Every sparse decode in randsae.sae goes through :func:`decode`, and every encoder-weight gradient
through :func:`encoder_weight_grad`, so the implementation can be swapped in one place
(:func:`backend_for`):

* ``randsae.kernels.dispatch`` (Triton kernels, autograd-aware) whenever it is importable and its
  own policy (environment variable ``RANDSAE_KERNELS``: auto / triton / torch) picks Triton for
  the tensors, i.e. CUDA tensors by default;
* otherwise a local torch path built on ``embedding_bag``. The kernels package's own torch
  fallback is its reference implementation, which materialises the [N, k, d] gathered rows; the
  local path never does, and its backward touches only the k selected latents per token.

Semantics are those of ``randsae.kernels.reference.sparse_decode_ref``:
out[n] = sum_j values[n, j] * W[indices[n, j]].
"""

from __future__ import annotations

import weakref
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

try:  # the kernels package is optional here; absent or partial means "use torch"
    from randsae.kernels import dispatch as _kernels

    _HAVE_KERNELS = all(
        hasattr(_kernels, name) for name in ("sparse_decode", "encoder_weight_grad", "backend_for")
    )
except ImportError:
    _kernels = None  # type: ignore[assignment]
    _HAVE_KERNELS = False


def backend_for(t: torch.Tensor) -> str:
    """'kernels' or 'torch': which implementation serves tensors like ``t``."""
    if _HAVE_KERNELS and _kernels.backend_for(t) == "triton":
        return "kernels"
    return "torch"


def decode(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """Sparse decode [N, k] x [N, k] x [L, d] -> [N, d] (no bias); differentiable in values, W_dec."""
    if backend_for(W_dec) == "kernels":
        return _kernels.sparse_decode(values, indices, W_dec)
    return _TorchSparseDecode.apply(values, indices, W_dec)


def encoder_weight_grad(
    grad_values: torch.Tensor, indices: torch.Tensor, x: torch.Tensor, n_latents: int
) -> torch.Tensor:
    """grad[l] = sum over (n, j) with indices[n, j] == l of grad_values[n, j] * x[n] -> [L, d]."""
    if backend_for(x) == "kernels":
        return _kernels.encoder_weight_grad(grad_values, indices, x, n_latents)
    return scatter_rows(grad_values, indices, x, n_latents)


# --------------------------------------------------------------------------------------------
# local torch path


class _LatentPlan(NamedTuple):
    """The N*k selections grouped by latent: what an embedding_bag with one bag per latent needs."""

    order: torch.Tensor  # selection ids (n * k + j) sorted by latent, stable
    tokens: torch.Tensor  # token n of each sorted selection
    offsets: torch.Tensor  # [L] start of each latent's bag


_plan_cache: tuple[weakref.ref, int, int, _LatentPlan] | None = None


def _latent_plan(indices: torch.Tensor, n_latents: int) -> _LatentPlan:
    """Sort the selections by latent once per indices tensor: a training step scatters with the
    same indices twice (decoder and encoder gradients), so the second call reuses the sort."""
    global _plan_cache
    c = _plan_cache
    if c is not None and c[0]() is indices and c[1] == indices._version and c[2] == n_latents:
        return c[3]
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=n_latents)
    plan = _LatentPlan(
        order=order,
        tokens=torch.div(order, indices.shape[1], rounding_mode="floor"),
        offsets=torch.cumsum(counts, 0) - counts,
    )
    _plan_cache = (weakref.ref(indices), indices._version, n_latents, plan)
    return plan


def scatter_rows(
    weights: torch.Tensor, indices: torch.Tensor, table: torch.Tensor, n_latents: int
) -> torch.Tensor:
    """out[l] = sum_{(n, j): indices[n, j] = l} weights[n, j] * table[n]   -> [n_latents, d].

    The transpose of a sparse decode. Sorting the N*k selections by latent turns it into an
    ``embedding_bag`` over ``table`` with one bag per latent: no [N*k, d] intermediate, no dense
    [N, L] matrix, deterministic (each output row is summed by one thread in index order).
    """
    plan = _latent_plan(indices, n_latents)
    w = weights.reshape(-1)[plan.order].to(table.dtype)
    return F.embedding_bag(plan.tokens, table, plan.offsets, per_sample_weights=w, mode="sum")


def _gather_dot(
    grad_out: torch.Tensor, W: torch.Tensor, indices: torch.Tensor, use_aten: bool = True
) -> torch.Tensor:
    """out[n, j] = <grad_out[n], W[indices[n, j]]>   -> [N, k].

    On the CPU: the kernel behind embedding_bag's per-sample-weight gradient, which computes
    exactly this without gathering [N, k, d]; elsewhere (or if that private op is missing):
    batched dot products over bounded blocks of gathered rows.
    """
    n, k = indices.shape
    op = getattr(torch.ops.aten, "_embedding_bag_per_sample_weights_backward", None)
    if use_aten and op is not None and grad_out.device.type == "cpu":
        flat = indices.reshape(-1)
        offsets = torch.arange(0, n * k, k, device=flat.device)
        offset2bag = torch.arange(n, device=flat.device).repeat_interleave(k)
        return op(grad_out.contiguous(), W, flat, offsets, offset2bag, 0, -1).view(n, k)
    out = torch.empty(n, k, dtype=grad_out.dtype, device=grad_out.device)
    step = max(1, (1 << 22) // max(1, k * W.shape[1]))  # bound the gathered block to 16 MiB
    for s in range(0, n, step):
        rows = W[indices[s : s + step]]  # [b, k, d]
        out[s : s + step] = torch.bmm(rows, grad_out[s : s + step].unsqueeze(-1)).squeeze(-1)
    return out


class _TorchSparseDecode(torch.autograd.Function):
    """embedding_bag forward; backward by hand so W_dec's gradient is a sparse scatter."""

    @staticmethod
    def forward(
        ctx: Any, values: torch.Tensor, indices: torch.Tensor, W: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(values, indices, W)
        v = values.to(W.dtype)
        return F.embedding_bag(indices, W, per_sample_weights=v, mode="sum")

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        values, indices, W = ctx.saved_tensors
        grad_values = grad_W = None
        if ctx.needs_input_grad[0]:
            grad_values = _gather_dot(grad_out, W, indices).to(values.dtype)
        if ctx.needs_input_grad[2]:
            grad_W = scatter_rows(values, indices, grad_out.to(W.dtype), W.shape[0])
        return grad_values, None, grad_W
