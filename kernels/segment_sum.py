"""Triton kernel: latent-major weighted row sums, the scatter half of both sparse gradients.

    out[l] = sum over (n, j) with indices[n, j] == l of weights[n, j] * rows[n]

With rows = grad_out and weights = values this is the decoder-weight gradient; with rows = x and
weights = grad_values it is the encoder-weight gradient. Rather than scatter with atomics (whose
float summation order, and so result, varies from run to run), each program owns one latent and a
slice of d, walks that latent's entries in the order fixed by ``latent_csr`` (a stable sort) and
writes its output slice once. The result is deterministic and latents that never fired get zeros
without a separate memset.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .csr import LatentCSR
from .triton_mode import configs_for_mode


@triton.autotune(
    configs=configs_for_mode(
        [
            triton.Config({"BLOCK_E": e, "BLOCK_D": bd}, num_warps=w)
            for e, bd, w in [(16, 64, 2), (16, 128, 4), (32, 128, 4), (32, 256, 4), (16, 256, 8)]
        ],
        # Small blocks so tiny test shapes still cross block edges (masking, multi-step loops).
        triton.Config({"BLOCK_E": 4, "BLOCK_D": 16}),
    ),
    key=["K", "D"],
)
@triton.jit
def _segment_sum_kernel(
    weights_ptr,  # [N * k] flat, contiguous
    perm_ptr,  # [N * k] int64: flat positions grouped by latent
    offsets_ptr,  # [L + 1] int64
    rows_ptr,  # [N, D], unit stride in D
    out_ptr,  # [L, D], unit stride in D
    K,
    D,
    stride_rows,
    stride_out,
    BLOCK_E: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    latent = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    start = tl.load(offsets_ptr + latent)
    end = tl.load(offsets_ptr + latent + 1)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for e0 in range(start, end, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        mask_e = offs_e < end
        pos = tl.load(perm_ptr + offs_e, mask=mask_e, other=0)
        weight = tl.load(weights_ptr + pos, mask=mask_e, other=0.0).to(tl.float32)
        token = pos // K
        row_ptrs = rows_ptr + token[:, None] * stride_rows + offs_d[None, :]
        rows = tl.load(row_ptrs, mask=mask_e[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(weight[:, None] * rows, axis=0)
    tl.store(out_ptr + latent * stride_out + offs_d, acc.to(out_ptr.dtype.element_ty), mask=mask_d)


def latent_segment_sum(
    weights: torch.Tensor, csr: LatentCSR, rows: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    """out [L, D] (out_dtype) with out[l] = sum_{e in latent l} weights.flat[e] * rows[e // k]."""
    n_latents, d = csr.n_latents, rows.shape[1]
    out = torch.empty(n_latents, d, dtype=out_dtype, device=rows.device)
    if n_latents == 0 or d == 0:
        return out
    weights = weights.contiguous()
    rows = rows.contiguous()

    def grid(meta):
        return (n_latents, triton.cdiv(d, meta["BLOCK_D"]))

    _segment_sum_kernel[grid](
        weights, csr.perm, csr.offsets, rows, out, csr.k, d, rows.stride(0), out.stride(0)
    )
    return out
