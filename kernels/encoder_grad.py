"""Triton path for the sparse encoder-weight gradient of a TopK SAE.

Only the k selected pre-activations of each token receive gradient, so

    grad_W_enc[l] = sum over (n, j) with indices[n, j] == l of grad_values[n, j] * x[n]

which is the same latent-major weighted row sum as the decoder-weight gradient (``segment_sum``),
with x in place of grad_out. The dense alternative, ``G.T @ x`` with a mostly-zero ``G [N, L]``,
costs as much as the encoder forward matmul; this costs O(N * k * d).
"""

from __future__ import annotations

import torch

from .csr import latent_csr
from .segment_sum import latent_segment_sum


def sparse_encoder_weight_grad(
    grad_values: torch.Tensor, indices: torch.Tensor, x: torch.Tensor, n_latents: int
) -> torch.Tensor:
    """grad_W_enc [n_latents, d] in x.dtype (fp32 accumulation); signature of the torch reference."""
    if grad_values.shape != indices.shape or indices.dim() != 2:
        raise ValueError(
            f"grad_values and indices must both be [N, k], got {tuple(grad_values.shape)} "
            f"and {tuple(indices.shape)}"
        )
    if x.dim() != 2 or x.shape[0] != indices.shape[0]:
        raise ValueError(f"x must be [N, d] with N = {indices.shape[0]}, got {tuple(x.shape)}")
    csr = latent_csr(indices, n_latents)
    return latent_segment_sum(grad_values, csr, x, x.dtype)
