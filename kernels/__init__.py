"""Triton kernels for TopK SAEs and their pure-torch counterpart (importable as randsae.kernels).

Use ``sparse_decode`` (differentiable) and ``encoder_weight_grad``; they dispatch to Triton on CUDA
and to the torch path (reference.py) otherwise. ``set_backend("auto" | "triton" | "torch")``
overrides the choice for the whole process (see dispatch.py). Before the first Triton use on a
device and dtype the kernels check themselves against the torch path (``self_check``); a failure
switches that device and dtype to torch with one warning. Importing this package does not
import triton.
"""

from .dispatch import (
    CHOICES,
    KernelBackendError,
    KernelSelfCheckWarning,
    SelfCheck,
    SparseDecode,
    backend_for,
    clear_self_checks,
    encoder_weight_grad,
    requested_backend,
    self_check,
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
    "KernelSelfCheckWarning",
    "SelfCheck",
    "SparseDecode",
    "backend_for",
    "clear_self_checks",
    "encoder_weight_grad",
    "requested_backend",
    "self_check",
    "set_backend",
    "sparse_decode",
    "sparse_decode_backward_ref",
    "sparse_decode_ref",
    "sparse_encoder_weight_grad_ref",
]
