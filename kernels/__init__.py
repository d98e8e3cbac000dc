"""Triton kernels for TopK SAEs, each with a pure-torch reference (importable as randsae.kernels).

Use ``sparse_decode`` (differentiable) and ``encoder_weight_grad``; they dispatch to Triton on CUDA
and to the torch path on CPU (override with RANDSAE_KERNELS=auto|triton|torch, see dispatch.py).
Importing this package does not import triton.
"""

from .dispatch import (
    ENV_VAR,
    KernelBackendError,
    SparseDecode,
    backend_for,
    encoder_weight_grad,
    sparse_decode,
)
from .reference import (
    sparse_decode_backward_ref,
    sparse_decode_ref,
    sparse_encoder_weight_grad_ref,
)

__all__ = [
    "ENV_VAR",
    "KernelBackendError",
    "SparseDecode",
    "backend_for",
    "encoder_weight_grad",
    "sparse_decode",
    "sparse_decode_backward_ref",
    "sparse_decode_ref",
    "sparse_encoder_weight_grad_ref",
]
