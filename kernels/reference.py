"""The torch implementation of the TopK SAE sparse operations: the reference and the CPU path.

This is randsae's only torch implementation of these operations. dispatch.py runs it whenever the
backend is "torch" (CPU tensors, CUDA without triton, or a forced "torch"), and the Triton kernels
are tested against it, so it is both the definition of the semantics and the CPU training path.

Shapes: N tokens, d model width, L latents, k active latents per token.
    values  [N, k]  activations of the selected latents
    indices [N, k]  latent ids (int64 or int32)
    W_dec   [L, d]  decoder rows
    x       [N, d]  (centred) input, for the encoder-weight gradient

Because the trainer runs it, it must be fast: nothing here materialises an ``N x L`` array or the
gathered ``[N, k, d]`` block (a test checks the largest allocation). Each operation is one fused
library call over the ``N * k`` selected entries:

    decode            embedding_bag(indices, W_dec, per_sample_weights=values)  one bag per token
    grad of values    embedding_bag's per-sample-weight gradient kernel         k dots per token
    grad of W_dec     embedding_bag(tokens, grad_out, latent offsets, values)   one bag per latent
    grad of W_enc     embedding_bag(tokens, x, latent offsets, grad_values)     one bag per latent

The per-latent bags come from ``csr.latent_csr`` (a stable sort of the indices, memoised, so the
two weight gradients of one step share it). Every output row is summed by one thread in a fixed
order, so results are bitwise reproducible on the CPU.

Precision: half and bfloat16 inputs are computed in float32 and the result is cast back, the same
contract as the Triton kernels (fp32 accumulation). float64 stays float64, so gradcheck works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .csr import LatentCSR, latent_csr


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """Promoted dtype of the inputs, at least float32 (the kernels' accumulation contract)."""
    out = torch.float32
    for dt in dtypes:
        out = torch.promote_types(out, dt)
    return out


def _latent_major_sum(
    weights: torch.Tensor, csr: LatentCSR, rows: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """out[l] = sum over entries e of latent l of weights.flat[e] * rows[e // k].

    An embedding_bag over ``rows`` with one bag per latent (the CSR offsets are the bag offsets):
    each output row is summed by one thread in entry order, so it is deterministic, and empty
    bags (latents that never fired) give zero rows. Measured 2-3x faster on CPU than the same
    product as a CSR sparse matmul, and no [N*k, d] intermediate.
    """
    vals = weights.reshape(-1)[csr.perm].to(dtype)
    return F.embedding_bag(
        csr.tokens(), rows.to(dtype), csr.offsets[:-1], per_sample_weights=vals, mode="sum"
    )


def sparse_decode_ref(
    values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor
) -> torch.Tensor:
    """out[n] = sum_j values[n, j] * W_dec[indices[n, j]]  -> [N, d].

    Output dtype is the promotion of values.dtype and W_dec.dtype. Differentiable by autograd with
    respect to values and W_dec (embedding_bag has both derivatives).
    """
    out_dtype = torch.promote_types(values.dtype, W_dec.dtype)
    dtype = _compute_dtype(out_dtype)
    out = F.embedding_bag(
        indices.contiguous(), W_dec.to(dtype), per_sample_weights=values.to(dtype), mode="sum"
    )
    return out.to(out_dtype)


def sparse_decode_grad_values_ref(
    grad_out: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor, values_dtype: torch.dtype
) -> torch.Tensor:
    """grad_values[n, j] = <grad_out[n], W_dec[indices[n, j]]>  -> [N, k] in values_dtype.

    Uses the kernel behind embedding_bag's per_sample_weights gradient, which computes exactly
    these N*k dots without gathering rows into a buffer. It is an internal ATen op (stable since
    torch 1.x); where it is missing, a chunked gather stands in. (Public sampled_addmm on the TopK
    pattern is as fast but fails when a row repeats an id.)
    """
    n, k = indices.shape
    dtype = _compute_dtype(grad_out.dtype, W_dec.dtype)
    grad_out, W_dec = grad_out.to(dtype), W_dec.to(dtype)
    op = getattr(torch.ops.aten, "_embedding_bag_per_sample_weights_backward", None)
    if op is None:
        return _grad_values_by_gather(grad_out, indices, W_dec).to(values_dtype)
    idx = indices.reshape(-1).long().contiguous()
    device = indices.device
    offsets = torch.arange(0, n * k, k, device=device, dtype=torch.int64)
    bag_of = torch.arange(n, device=device, dtype=torch.int64).repeat_interleave(k)
    flat = op(grad_out.contiguous(), W_dec, idx, offsets, bag_of, 0, -1)  # mode 0 = sum
    return flat.view(n, k).to(values_dtype)


def _grad_values_by_gather(
    grad_out: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor, chunk: int = 256
) -> torch.Tensor:
    """Fallback for sparse_decode_grad_values_ref: gathers [chunk, k, d] rows at a time, so the
    buffer stays cache-sized instead of [N, k, d]."""
    n, k = indices.shape
    out = torch.empty(n, k, dtype=grad_out.dtype, device=grad_out.device)
    for s in range(0, n, chunk):
        rows = W_dec[indices[s : s + chunk]]  # [c, k, d]
        torch.bmm(rows, grad_out[s : s + chunk, :, None], out=out[s : s + chunk, :, None])
    return out


def sparse_decode_grad_weight_ref(
    grad_out: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor
) -> torch.Tensor:
    """grad_W_dec[l] = sum_{(n, j): indices[n, j] = l} values[n, j] * grad_out[n]  -> [L, d]."""
    csr = latent_csr(indices, W_dec.shape[0])
    dtype = _compute_dtype(values.dtype, grad_out.dtype)
    return _latent_major_sum(values, csr, grad_out, dtype).to(W_dec.dtype)


def sparse_decode_backward_ref(
    grad_out: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of sparse_decode: (grad_values [N, k], grad_W_dec [L, d])."""
    grad_values = sparse_decode_grad_values_ref(grad_out, indices, W_dec, values.dtype)
    grad_W = sparse_decode_grad_weight_ref(grad_out, values, indices, W_dec)
    return grad_values, grad_W


def sparse_encoder_weight_grad_ref(
    grad_values: torch.Tensor, indices: torch.Tensor, x: torch.Tensor, n_latents: int
) -> torch.Tensor:
    """Gradient of W_enc [L, d] when only the k selected pre-activations receive gradient:
    grad_W_enc[l] = sum_{(n, j): indices[n, j] = l} grad_values[n, j] * x[n].  Dtype: x.dtype."""
    csr = latent_csr(indices, n_latents)
    dtype = _compute_dtype(grad_values.dtype, x.dtype)
    return _latent_major_sum(grad_values, csr, x, dtype).to(x.dtype)
