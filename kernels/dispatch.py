"""One switch between the Triton kernels and the torch path, and the decoder's autograd wrapper.

Every sparse op of randsae (the SAE's decode, its gradients, the encoder-weight gradient) goes
through :func:`sparse_decode` and :func:`encoder_weight_grad` here. Backends are named
``"triton"`` (topk_decode.py, encoder_grad.py) and ``"torch"`` (reference.py, the only torch
implementation: the reference the kernels are tested against and the CPU training path).

Policy: a process-wide setting, :func:`set_backend` (the CLI sets it from the config key
``execution.kernels``); it is read at every forward call:
    auto   (default) Triton for CUDA tensors when triton is installed, torch otherwise.
    torch  always the torch path, e.g. to rule the kernels out when debugging.
    triton always Triton. On CPU tensors this is only possible under the Triton interpreter
           (TRITON_INTERPRET=1, Triton's own variable), which is how the kernels are tested
           without a GPU; anything else raises KernelBackendError instead of failing deep
           inside Triton.

Triton is an optional dependency (the ``gpu`` extra), so the Triton modules are imported only when
the Triton backend is chosen.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from functools import cache
from typing import Any, Literal

import torch

from randsae.errors import RandsaeError

from . import reference

Backend = Literal["triton", "torch"]
CHOICES = ("auto", "triton", "torch")

# The process-wide request; set_backend is the only writer.
_requested = "auto"


class KernelChoiceError(RandsaeError, ValueError):
    """A backend name that is not one of CHOICES (config key execution.kernels)."""


class KernelBackendError(RandsaeError, RuntimeError):
    """The requested kernel backend cannot run the given tensors."""


@cache
def triton_available() -> bool:
    """Whether the triton package is installed (it is importable without a GPU)."""
    return importlib.util.find_spec("triton") is not None


def set_backend(choice: str) -> None:
    """Request a backend for every later sparse op in this process: 'auto', 'triton' or 'torch'.

    Only the name is checked here; whether the backend can run given tensors is decided per call
    (a forced 'triton' on CPU tensors outside the interpreter raises KernelBackendError there).
    """
    global _requested
    if not isinstance(choice, str) or choice not in CHOICES:
        raise KernelChoiceError(
            f"execution.kernels: kernel backend must be one of {', '.join(repr(c) for c in CHOICES)}, got {choice!r}"
        )
    _requested = choice


def requested_backend() -> str:
    """The current process-wide request: 'auto' (the default), 'triton' or 'torch'."""
    return _requested


@cache
def _warn_no_triton_once() -> None:
    warnings.warn(
        "CUDA tensors but triton is not installed: using the slower torch path for the TopK "
        "sparse ops (install randsae[gpu] to get the Triton kernels)",
        RuntimeWarning,
        stacklevel=3,
    )


def backend_for(tensor: torch.Tensor) -> Backend:
    """The backend that will run an op on ``tensor``'s device under the current request."""
    choice = requested_backend()
    if choice == "torch":
        return "torch"
    on_cuda = tensor.device.type == "cuda"
    if choice == "auto":
        if on_cuda and not triton_available():
            _warn_no_triton_once()
            return "torch"
        return "triton" if on_cuda else "torch"
    if not triton_available():
        raise KernelBackendError(
            "kernel backend 'triton' requested but the triton package is not installed "
            "(pip install 'randsae[gpu]')"
        )
    if not on_cuda:
        from .triton_mode import interpreted

        if not interpreted():
            late = os.environ.get("TRITON_INTERPRET", "").strip() not in ("", "0")
            hint = (
                "TRITON_INTERPRET is set, but only after triton was imported in this process; "
                "it must be in the environment before the first import of triton"
                if late
                else "set TRITON_INTERPRET=1 in the environment before the process imports triton"
            )
            raise KernelBackendError(
                f"kernel backend 'triton' requested but the tensors are on {tensor.device}: the "
                f"Triton kernels run on CUDA devices, or on the CPU only under the Triton "
                f"interpreter ({hint}). Request 'auto' or 'torch' (set_backend, config key "
                f"execution.kernels) to use the torch path."
            )
    return "triton"


def _triton_decode() -> Any:
    from . import topk_decode

    return topk_decode


class SparseDecode(torch.autograd.Function):
    """out = sparse_decode(values, indices, W_dec), with gradients for values and W_dec.

    The backend is chosen once in forward and reused in backward, so one step never mixes paths.
    Only the gradients autograd asks for are computed.
    """

    @staticmethod
    def forward(
        ctx: Any, values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor
    ) -> torch.Tensor:
        backend = backend_for(W_dec)
        ctx.backend = backend
        ctx.save_for_backward(values, indices, W_dec)
        if backend == "triton":
            return _triton_decode().sparse_decode(values, indices, W_dec)
        return reference.sparse_decode_ref(values, indices, W_dec)

    @staticmethod
    def backward(
        ctx: Any, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, None, torch.Tensor | None]:
        values, indices, W_dec = ctx.saved_tensors
        want_values, _, want_weight = ctx.needs_input_grad
        if ctx.backend == "triton":
            ops = _triton_decode()
            grad_values_fn, grad_weight_fn = (
                ops.sparse_decode_grad_values,
                ops.sparse_decode_grad_weight,
            )
        else:
            grad_values_fn = reference.sparse_decode_grad_values_ref
            grad_weight_fn = reference.sparse_decode_grad_weight_ref
        grad_values = (
            grad_values_fn(grad_out, indices, W_dec, values.dtype) if want_values else None
        )
        grad_W = grad_weight_fn(grad_out, values, indices, W_dec) if want_weight else None
        return grad_values, None, grad_W


def sparse_decode(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """TopK decode ``out[n] = sum_j values[n, j] * W_dec[indices[n, j]]`` -> [N, d].

    Differentiable with respect to values and W_dec (indices are integer and get no gradient).
    The decoder bias, if any, is the caller's to add.
    """
    return SparseDecode.apply(values, indices, W_dec)


def encoder_weight_grad(
    grad_values: torch.Tensor, indices: torch.Tensor, x: torch.Tensor, n_latents: int
) -> torch.Tensor:
    """grad_W_enc [n_latents, d] from the gradient of the k selected pre-activations per token.

    For a trainer that computes the encoder backward by hand: with pre = x @ W_enc.T + b and
    values = act(pre.gather(1, indices)), pass grad_values = d loss / d (selected pre-activations).
    """
    if backend_for(x) == "triton":
        from . import encoder_grad

        return encoder_grad.sparse_encoder_weight_grad(grad_values, indices, x, n_latents)
    return reference.sparse_encoder_weight_grad_ref(grad_values, indices, x, n_latents)
