"""Triton kernels for TopK SAEs and their pure-torch counterpart (importable as randsae.kernels).

Use ``sparse_decode`` (differentiable) and ``encoder_weight_grad``; they dispatch to Triton on CUDA
and to the torch path (reference.py) otherwise. ``set_backend("auto" | "triton" | "torch")``
overrides the choice for the whole process (see dispatch.py). Importing this package does not
import triton.
"""

from .dispatch import (
    CHOICES,
    KernelBackendError,
    SparseDecode,
    backend_for,
    encoder_weight_grad,
    requested_backend,
    set_backend,
    sparse_decode,
)
from .reference import (
    sparse_decode_backward_ref,
    sparse_decode_ref,
    sparse_encoder_weight_grad_ref,
)

__all__ = [
    "CHOICES",
    "KernelBackendError",
    "SparseDecode",
    "backend_for",
    "encoder_weight_grad",
    "requested_backend",
    "set_backend",
    "sparse_decode",
    "sparse_decode_backward_ref",
    "sparse_decode_ref",
    "sparse_encoder_weight_grad_ref",
]
