"""One switch between the Triton kernels and the torch path, and the decoder's autograd wrapper.

Every sparse op of randsae (the SAE's decode, its gradients, the encoder-weight gradient) goes
through :func:`sparse_decode` and :func:`encoder_weight_grad` here. Backends are named
``"triton"`` (topk_decode.py, encoder_grad.py) and ``"torch"`` (reference.py, the only torch
implementation: the reference the kernels are tested against and the CPU training path).

Policy: a process-wide setting, :func:`set_backend` (the CLI sets it from the config key
``execution.kernels``); it is read at every forward call:
    auto   (default) Triton for CUDA tensors when triton is installed, torch otherwise.
    torch  always the torch path, e.g. to rule the kernels out when debugging.
    triton always Triton (while its self-check passes, below). On CPU tensors this is only
           possible under the Triton interpreter (TRITON_INTERPRET=1, Triton's own variable),
           which is how the kernels are tested without a GPU; anything else raises
           KernelBackendError instead of failing deep inside Triton.

Self-check: before the Triton path is first used on a (device, dtype) in a process, every kernel
runs once on a tiny seeded problem (:data:`SELF_CHECK_SHAPE`) and is compared with the torch
reference (tolerances in :data:`SELF_CHECK_TOLERANCES`). A new GPU, driver or Triton release can
miscompile a kernel; a wrong gradient would not crash, it would silently train a worse SAE. If a
kernel disagrees or fails to compile or run, this process uses the torch path on that device and
dtype from then on (under 'auto' and a forced 'triton' alike) and says so once, as a
:class:`KernelSelfCheckWarning` and a log record naming the kernel, its error and the tolerance.
The verdict is cached per process (:func:`self_check`; :func:`clear_self_checks` forgets it).

Triton is an optional dependency (the ``gpu`` extra), so the Triton modules are imported only when
the Triton backend is chosen.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import time
import warnings
from collections.abc import Callable
from functools import cache
from typing import Any, Literal, NamedTuple

import torch

from randsae.errors import RandsaeError

from . import reference

Backend = Literal["triton", "torch"]
CHOICES = ("auto", "triton", "torch")

# The process-wide request; set_backend is the only writer.
_requested = "auto"

log = logging.getLogger("randsae.kernels")


class KernelChoiceError(RandsaeError, ValueError):
    """A backend name that is not one of CHOICES (config key execution.kernels)."""


class KernelBackendError(RandsaeError, RuntimeError):
    """The requested kernel backend cannot run the given tensors."""


class KernelSelfCheckWarning(RuntimeWarning):
    """A Triton kernel disagreed with the torch reference (or failed) in its self-check."""


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
    """The backend that will run an op on ``tensor``'s device under the current request.

    Where that is Triton, the kernels' self-check for the tensor's device and dtype runs first
    (once per process); if it failed, the answer is 'torch'.
    """
    choice = requested_backend()
    if choice == "torch":
        return "torch"
    on_cuda = tensor.device.type == "cuda"
    if choice == "auto":
        if not on_cuda:
            return "torch"
        if not triton_available():
            _warn_no_triton_once()
            return "torch"
        return _checked_triton(tensor)
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
    return _checked_triton(tensor)


def _checked_triton(tensor: torch.Tensor) -> Backend:
    return "triton" if self_check(tensor.device, tensor.dtype).ok else "torch"


# --- self-check -----------------------------------------------------------------------------

#: (N tokens, k active, L latents, d width) of the self-check problem. k and d are multiples of
#: 16 like the usual SAE shapes, so on a GPU Triton compiles the same specialisations the real
#: calls use (the check's compile time is not wasted); small enough that the CPU interpreter
#: runs all four kernels in about two seconds.
SELF_CHECK_SHAPE = (32, 16, 128, 32)
#: (rtol, atol) per dtype: |triton - torch| <= atol + rtol * |torch| elementwise. Both sides
#: accumulate in float32 in different orders, so fp32 agrees to ~1e-6 here; half types are
#: allowed about two rounding steps of the output. Anything else (float64) uses fp32's.
SELF_CHECK_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-4, 1e-4),
    torch.bfloat16: (2**-7, 1e-2),
    torch.float16: (1e-3, 1e-3),
}


class SelfCheck(NamedTuple):
    """The verdict of the Triton kernels' self-check on one device and dtype."""

    ok: bool
    device: str  # e.g. "cuda:0" (or "cpu" under the Triton interpreter)
    dtype: str  # e.g. "float32"
    kernel: str | None  # the first kernel that failed, None when ok
    max_error: float  # largest |triton - torch| of the failing kernel (of all, when ok); nan if it raised
    tolerance: str  # the tolerance it was held to
    error: str | None  # the exception a failing kernel raised (type: message), else None
    seconds: float  # how long the check took (first compilation and autotuning included)


_self_checks: dict[tuple[str, torch.dtype], SelfCheck] = {}


def clear_self_checks() -> None:
    """Forget every cached verdict (tests; a later Triton use checks again)."""
    _self_checks.clear()


def _device_key(device: torch.device | str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def self_check(device: torch.device | str, dtype: torch.dtype) -> SelfCheck:
    """Run (once per process and (device, dtype)) every Triton kernel on a tiny seeded problem
    against the torch reference; the cached verdict afterwards.

    A failed check is reported once, as a KernelSelfCheckWarning and a log warning, and makes
    :func:`backend_for` answer 'torch' for that device and dtype. Needs triton, and on the CPU
    the Triton interpreter (backend_for checks both before it gets here).
    """
    dev = _device_key(device)
    key = (str(dev), dtype)
    verdict = _self_checks.get(key)
    if verdict is None:
        verdict = _run_self_check(dev, dtype)
        _self_checks[key] = verdict
        if verdict.ok:
            log.info("Triton kernels passed their self-check on %s %s in %.1f s (max abs error %.1e)",
                     verdict.device, verdict.dtype, verdict.seconds, verdict.max_error)
        else:
            message = _failure_message(verdict)
            log.warning("%s", message)
            warnings.warn(message, KernelSelfCheckWarning, stacklevel=4)
    return verdict


def _failure_message(v: SelfCheck) -> str:
    if v.error is not None:
        what = f"failed to compile or run ({v.error})"
    elif math.isnan(v.max_error):
        what = "returned non-finite values or the wrong shape or dtype"
    else:
        what = f"disagrees with the torch reference: max abs error {v.max_error:.2e}"
    return (
        f"Triton kernel self-check failed on {v.device} {v.dtype}: {v.kernel} {what} "
        f"(tolerance {v.tolerance}). This process uses the torch path for the TopK sparse ops on "
        f"{v.device} {v.dtype} from now on (slower; equal up to float rounding); set "
        f"execution.kernels: torch to skip the check, and report the GPU, driver and Triton version."
    )


def _self_check_problem(device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    n, k, n_latents, d = SELF_CHECK_SHAPE
    gen = torch.Generator().manual_seed(0)  # on the CPU: the same problem on every device
    # Distinct ids per row, as TopK produces; values of both signs exercise every product.
    indices = torch.rand(n, n_latents, generator=gen).argsort(dim=1)[:, :k]
    tensors = {
        "values": torch.randn(n, k, generator=gen),
        "W_dec": torch.randn(n_latents, d, generator=gen),
        "grad_out": torch.randn(n, d, generator=gen),
        "x": torch.randn(n, d, generator=gen),
    }
    problem = {name: t.to(device=device, dtype=dtype) for name, t in tensors.items()}
    problem["indices"] = indices.to(device)
    return problem


def _self_check_cases(
    p: dict[str, torch.Tensor],
) -> list[tuple[str, Callable[[], torch.Tensor], Callable[[], torch.Tensor]]]:
    """(kernel name, triton call, torch reference call) for every kernel.

    The Triton functions are looked up on their modules at call time, so a test can replace one
    (monkeypatch) and see the check catch it.
    """
    ops = _triton_decode()
    from . import encoder_grad

    values, indices, W_dec, grad_out, x = p["values"], p["indices"], p["W_dec"], p["grad_out"], p["x"]
    n_latents = W_dec.shape[0]
    return [
        ("topk_decode.sparse_decode",
         lambda: ops.sparse_decode(values, indices, W_dec),
         lambda: reference.sparse_decode_ref(values, indices, W_dec)),
        ("topk_decode.sparse_decode_grad_values",
         lambda: ops.sparse_decode_grad_values(grad_out, indices, W_dec, values.dtype),
         lambda: reference.sparse_decode_grad_values_ref(grad_out, indices, W_dec, values.dtype)),
        ("topk_decode.sparse_decode_grad_weight",
         lambda: ops.sparse_decode_grad_weight(grad_out, values, indices, W_dec),
         lambda: reference.sparse_decode_grad_weight_ref(grad_out, values, indices, W_dec)),
        ("encoder_grad.sparse_encoder_weight_grad",
         lambda: encoder_grad.sparse_encoder_weight_grad(values, indices, x, n_latents),
         lambda: reference.sparse_encoder_weight_grad_ref(values, indices, x, n_latents)),
    ]  # fmt: skip


def _run_self_check(device: torch.device, dtype: torch.dtype) -> SelfCheck:
    rtol, atol = SELF_CHECK_TOLERANCES.get(dtype, SELF_CHECK_TOLERANCES[torch.float32])
    tolerance = f"atol {atol:.1e} + rtol {rtol:.1e} * abs(reference)"
    name = str(dtype).removeprefix("torch.")
    t0 = time.perf_counter()
    worst = 0.0

    def verdict(kernel: str | None, max_error: float, error: str | None = None) -> SelfCheck:
        return SelfCheck(kernel is None, str(device), name, kernel, max_error, tolerance, error,
                         time.perf_counter() - t0)

    # Kernels launch on the current CUDA device: make it the checked one.
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with on_device, torch.no_grad():
        try:
            cases = _self_check_cases(_self_check_problem(device, dtype))
        except Exception as e:  # the Triton modules failed to import or build their configs
            return verdict("randsae.kernels Triton modules", math.nan, _describe(e))
        for kernel, run_triton, run_torch in cases:
            want = run_torch()
            try:
                got = run_triton()
                if got.is_cuda:
                    torch.cuda.synchronize(got.device)  # asynchronous launch errors surface here
            except Exception as e:  # compile errors, out of resources, launch failures
                return verdict(kernel, math.nan, _describe(e))
            if got.shape != want.shape or got.dtype != want.dtype or not torch.isfinite(got).all():
                return verdict(kernel, math.nan)
            diff = (got.double() - want.double()).abs()
            err = float(diff.max()) if diff.numel() else 0.0
            if bool((diff > atol + rtol * want.double().abs()).any()):
                return verdict(kernel, err)
            worst = max(worst, err)
    return verdict(None, worst)


def _describe(e: BaseException) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first[:300]}" if first else type(e).__name__


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
