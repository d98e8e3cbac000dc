"""Triton kernels for the TopK decoder: out[n] = sum_j values[n, j] * W_dec[indices[n, j]].

A TopK SAE's decoder reads only k of its L rows per token, so a dense ``[N, L] @ [L, d]`` matmul
wastes L/k of its work. Forward and the values-gradient are token-major gathers (one program per
token and slice of d, reading the k rows it needs); the decoder-weight gradient is a latent-major
sum done by ``segment_sum`` (deterministic, no atomics). All arithmetic is float32 inside the
kernels whatever the storage dtype: bf16 math in the Triton interpreter gives NaN, and fp32
accumulation is what we want on a GPU anyway.

Public functions have the signatures of their torch references in ``reference.py``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .csr import latent_csr
from .segment_sum import latent_segment_sum
from .triton_mode import configs_for_mode

_CONFIGS = configs_for_mode(
    [
        triton.Config({"BLOCK_K": bk, "BLOCK_D": bd}, num_warps=w)
        for bk, bd, w in [(16, 64, 2), (32, 64, 2), (32, 128, 4), (32, 256, 4), (16, 256, 8)]
    ],
    # Small blocks so tiny test shapes still cross block edges (masking, multi-step loops).
    triton.Config({"BLOCK_K": 4, "BLOCK_D": 16}),
)


@triton.autotune(configs=_CONFIGS, key=["K", "D"])
@triton.jit
def _decode_fwd_kernel(
    values_ptr,  # [N, K]
    indices_ptr,  # [N, K] int32/int64
    w_ptr,  # [L, D]
    out_ptr,  # [N, D]
    K,
    D,
    stride_v,
    stride_i,
    stride_w,
    stride_o,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        idx = tl.load(indices_ptr + token * stride_i + offs_k, mask=mask_k, other=0).to(tl.int64)
        val = tl.load(values_ptr + token * stride_v + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        w_ptrs = w_ptr + idx[:, None] * stride_w + offs_d[None, :]
        w = tl.load(w_ptrs, mask=mask_k[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(val[:, None] * w, axis=0)
    tl.store(out_ptr + token * stride_o + offs_d, acc.to(out_ptr.dtype.element_ty), mask=mask_d)


@triton.autotune(configs=_CONFIGS, key=["K", "D"])
@triton.jit
def _decode_grad_values_kernel(
    grad_out_ptr,  # [N, D]
    indices_ptr,  # [N, K]
    w_ptr,  # [L, D]
    grad_values_ptr,  # [N, K]
    K,
    D,
    stride_g,
    stride_i,
    stride_w,
    stride_gv,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_k = offs_k < K
    idx = tl.load(indices_ptr + token * stride_i + offs_k, mask=mask_k, other=0).to(tl.int64)
    acc = tl.zeros([BLOCK_K], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        g = tl.load(grad_out_ptr + token * stride_g + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        w_ptrs = w_ptr + idx[:, None] * stride_w + offs_d[None, :]
        w = tl.load(w_ptrs, mask=mask_k[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(w * g[None, :], axis=1)
    tl.store(
        grad_values_ptr + token * stride_gv + offs_k,
        acc.to(grad_values_ptr.dtype.element_ty),
        mask=mask_k,
    )


def _check_shapes(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor) -> None:
    if values.dim() != 2 or values.shape != indices.shape:
        raise ValueError(
            f"values and indices must both be [N, k], got {tuple(values.shape)} and {tuple(indices.shape)}"
        )
    if W_dec.dim() != 2:
        raise ValueError(f"W_dec must be [L, d], got {tuple(W_dec.shape)}")


def sparse_decode(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """out[n] = sum_j values[n, j] * W_dec[indices[n, j]]  -> [N, d] (promoted dtype)."""
    _check_shapes(values, indices, W_dec)
    n, k = values.shape
    d = W_dec.shape[1]
    out_dtype = torch.promote_types(values.dtype, W_dec.dtype)
    out = torch.empty(n, d, dtype=out_dtype, device=W_dec.device)
    if n == 0 or d == 0:
        return out
    if k == 0:
        return out.zero_()
    values, indices, W_dec = values.contiguous(), indices.contiguous(), W_dec.contiguous()

    def grid(meta):
        return (n, triton.cdiv(d, meta["BLOCK_D"]))

    _decode_fwd_kernel[grid](
        values, indices, W_dec, out, k, d,
        values.stride(0), indices.stride(0), W_dec.stride(0), out.stride(0),
    )  # fmt: skip
    return out


def sparse_decode_grad_values(
    grad_out: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor, values_dtype: torch.dtype
) -> torch.Tensor:
    """grad_values[n, j] = <grad_out[n], W_dec[indices[n, j]]>  -> [N, k] in values_dtype."""
    n, k = indices.shape
    d = W_dec.shape[1]
    grad_values = torch.empty(n, k, dtype=values_dtype, device=W_dec.device)
    if n == 0 or k == 0:
        return grad_values
    if d == 0:
        return grad_values.zero_()
    grad_out, indices, W_dec = grad_out.contiguous(), indices.contiguous(), W_dec.contiguous()

    def grid(meta):
        return (n, triton.cdiv(k, meta["BLOCK_K"]))

    _decode_grad_values_kernel[grid](
        grad_out, indices, W_dec, grad_values, k, d,
        grad_out.stride(0), indices.stride(0), W_dec.stride(0), grad_values.stride(0),
    )  # fmt: skip
    return grad_values


def sparse_decode_grad_weight(
    grad_out: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor
) -> torch.Tensor:
    """grad_W_dec[l] = sum_{(n, j): indices[n, j] = l} values[n, j] * grad_out[n]  -> [L, d]."""
    csr = latent_csr(indices, W_dec.shape[0])
    return latent_segment_sum(values, csr, grad_out, W_dec.dtype)


def sparse_decode_backward(
    grad_out: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of sparse_decode: (grad_values [N, k], grad_W_dec [L, d])."""
    _check_shapes(values, indices, W_dec)
    grad_values = sparse_decode_grad_values(grad_out, indices, W_dec, values.dtype)
    grad_W = sparse_decode_grad_weight(grad_out, values, indices, W_dec)
    return grad_values, grad_W
