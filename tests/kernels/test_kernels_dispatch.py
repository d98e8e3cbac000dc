"""Backend selection (dispatch.set_backend) and the autograd wrapper, on the CPU torch path.

Routing through the Triton kernels themselves is tested in test_kernels_triton.py, which needs
an interpreter (or GPU) process.
"""

from __future__ import annotations

import types

import pytest
import randsae.kernels as kernels
import torch
from randsae.kernels import dispatch, reference

# Only .device and .dtype are consulted.
CUDA_LIKE = types.SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.float32)
CPU = torch.zeros(1)
# conftest.py resets the process-wide request to 'auto' around every test.


def verdict(ok):
    """A self-check verdict as dispatch.self_check returns it (the check itself needs Triton
    kernels that run: it is tested in test_kernels_triton.py, under the interpreter or on CUDA)."""
    return dispatch.SelfCheck(ok, "cuda:0", "float32", None if ok else "topk_decode.sparse_decode",
                              0.0 if ok else 3.0, "atol 1.0e-04 + rtol 1.0e-04 * abs(reference)", None, 0.1)


@pytest.fixture
def kernels_pass(monkeypatch):
    """The self-check passes (here no kernel can run on the fake CUDA tensor); records calls."""
    calls = []

    def fake(device, dtype):
        calls.append((str(device), dtype))
        return verdict(True)

    monkeypatch.setattr(dispatch, "self_check", fake)
    return calls


def make_case(n, d, n_latents, k, dtype, distinct=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if distinct:
        indices = torch.rand(n, n_latents, generator=gen).argsort(dim=1)[:, :k]
    else:
        indices = torch.randint(0, n_latents, (n, k), generator=gen)
    values = torch.randn(n, k, generator=gen).to(dtype)
    W_dec = torch.randn(n_latents, d, generator=gen).to(dtype)
    grad_out = torch.randn(n, d, generator=gen).to(dtype)
    return values, indices, W_dec, grad_out


# --- backend selection ---------------------------------------------------------------------


def test_auto_picks_torch_on_cpu_and_triton_on_cuda(monkeypatch, kernels_pass):
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    assert kernels.backend_for(CPU) == "torch"
    assert kernels.backend_for(CUDA_LIKE) == "triton"
    kernels.set_backend("auto")  # explicit 'auto' is the default
    assert kernels.requested_backend() == "auto"
    assert kernels.backend_for(CUDA_LIKE) == "triton"
    # The self-check was consulted for the CUDA tensor's device and dtype, never for the CPU one.
    assert kernels_pass == [("cuda:0", torch.float32)] * 2


@pytest.mark.parametrize("choice", ["auto", "triton"])
def test_a_failed_self_check_routes_to_torch(monkeypatch, choice):
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    monkeypatch.setattr(dispatch, "self_check", lambda device, dtype: verdict(False))
    kernels.set_backend(choice)
    assert kernels.backend_for(CUDA_LIKE) == "torch"


def test_the_torch_path_never_runs_the_self_check(monkeypatch):
    def must_not_run(device, dtype):
        raise AssertionError("self-check run for the torch path")

    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    monkeypatch.setattr(dispatch, "self_check", must_not_run)
    assert kernels.backend_for(CPU) == "torch"  # auto on CPU
    kernels.set_backend("torch")
    assert kernels.backend_for(CUDA_LIKE) == "torch"
    values, indices, W_dec, grad_out = make_case(4, 5, 7, 3, torch.float32)
    kernels.sparse_decode(values.requires_grad_(), indices, W_dec).backward(grad_out)
    assert values.grad is not None


def test_auto_on_cuda_without_triton_warns_and_uses_torch(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    dispatch._warn_no_triton_once.cache_clear()
    with pytest.warns(RuntimeWarning, match="triton is not installed"):
        assert kernels.backend_for(CUDA_LIKE) == "torch"


def test_forced_torch_wins_everywhere(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    kernels.set_backend("torch")
    assert kernels.requested_backend() == "torch"
    assert kernels.backend_for(CUDA_LIKE) == "torch"
    assert kernels.backend_for(CPU) == "torch"


@pytest.mark.parametrize("bad", ["cuda", "Torch", " auto", "", None])
def test_unknown_value_is_rejected_and_the_request_is_kept(bad):
    kernels.set_backend("torch")
    with pytest.raises(ValueError, match=r"one of 'auto', 'triton', 'torch', got"):
        kernels.set_backend(bad)
    assert kernels.requested_backend() == "torch"  # a rejected value changes nothing


def test_forced_triton_without_the_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    kernels.set_backend("triton")
    with pytest.raises(kernels.KernelBackendError, match=r"randsae\[gpu\]"):
        kernels.backend_for(CUDA_LIKE)


def test_forced_triton_on_cpu_needs_the_interpreter(monkeypatch, kernels_pass):
    pytest.importorskip("triton")
    from randsae.kernels import triton_mode

    values, indices, W_dec, _ = make_case(3, 5, 7, 2, torch.float32)
    kernels.set_backend("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(triton_mode, "interpreted", lambda: False)
    # Raised by the public entry points before any Triton code runs, with the way out spelled out.
    for call in (
        lambda: kernels.sparse_decode(values, indices, W_dec),
        lambda: kernels.encoder_weight_grad(values, indices, W_dec[:3], 7),
    ):
        with pytest.raises(kernels.KernelBackendError) as err:
            call()
        message = str(err.value)
        assert "TRITON_INTERPRET=1" in message
        assert "on cpu" in message
        assert "'torch'" in message and "execution.kernels" in message
    # The variable set too late (triton already imported without it) gets its own explanation.
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(kernels.KernelBackendError, match="only after triton was imported"):
        kernels.backend_for(CPU)
    # In an interpreter process the same request is honoured.
    monkeypatch.setattr(triton_mode, "interpreted", lambda: True)
    assert kernels.backend_for(CPU) == "triton"
    assert kernels_pass == [("cpu", torch.float32)]  # the refusals above ran no check


# --- autograd wrapper (torch path) -----------------------------------------------------------


@pytest.mark.parametrize("distinct", [True, False], ids=["topk", "repeated-ids"])
def test_sparse_decode_passes_gradcheck(distinct):
    values, indices, W_dec, _ = make_case(4, 5, 7, 3, torch.float64, distinct=distinct)
    values.requires_grad_()
    W_dec.requires_grad_()
    assert torch.autograd.gradcheck(kernels.sparse_decode, (values, indices, W_dec))


def test_sparse_decode_matches_autograd_of_the_reference_and_a_dense_oracle():
    values, indices, W_dec, grad_out = make_case(6, 13, 37, 4, torch.float32)

    def grads(forward):
        v, W = values.clone().requires_grad_(), W_dec.clone().requires_grad_()
        out = forward(v, W)
        out.backward(grad_out)
        return out, v.grad, W.grad

    ours = grads(lambda v, W: kernels.sparse_decode(v, indices, W))
    autograd_ref = grads(lambda v, W: reference.sparse_decode_ref(v, indices, W))
    dense = grads(lambda v, W: torch.einsum("nk,nkd->nd", v, W[indices]))
    for mine, theirs, oracle in zip(ours, autograd_ref, dense, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mine, oracle, rtol=1e-5, atol=1e-5)
    assert ours[2][indices.unique()].abs().sum() > 0  # non-trivial gradients were compared


def test_only_requested_gradients_are_computed(monkeypatch):
    def must_not_run(*args):
        raise AssertionError("decoder-weight gradient computed although W_dec needs no grad")

    monkeypatch.setattr(reference, "sparse_decode_grad_weight_ref", must_not_run)
    values, indices, W_dec, grad_out = make_case(4, 5, 7, 3, torch.float32)
    values.requires_grad_()
    kernels.sparse_decode(values, indices, W_dec).backward(grad_out)
    assert values.grad is not None and W_dec.grad is None


def test_backward_uses_the_backend_chosen_in_forward(monkeypatch):
    values, indices, W_dec, grad_out = make_case(4, 5, 7, 3, torch.float32)
    values.requires_grad_()
    out = kernels.sparse_decode(values, indices, W_dec)  # auto on CPU: torch
    # A forced 'triton' without the package would raise KernelBackendError if consulted again.
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    kernels.set_backend("triton")
    with pytest.raises(kernels.KernelBackendError):
        kernels.backend_for(CPU)
    out.backward(grad_out)
    expected = torch.einsum("nd,nkd->nk", grad_out, W_dec[indices])
    torch.testing.assert_close(values.grad, expected, rtol=1e-5, atol=1e-5)


def test_bf16_keeps_dtypes_and_accuracy():
    values, indices, W_dec, grad_out = make_case(6, 40, 37, 8, torch.bfloat16)
    v, W = values.clone().requires_grad_(), W_dec.clone().requires_grad_()
    out = kernels.sparse_decode(v, indices, W)
    out.backward(grad_out)
    assert out.dtype == v.grad.dtype == W.grad.dtype == torch.bfloat16
    expected = torch.einsum("nk,nkd->nd", values.double(), W_dec.double()[indices])
    torch.testing.assert_close(out.double(), expected, rtol=2**-7, atol=1e-3)


def test_encoder_weight_grad_dispatches_to_the_reference_on_cpu():
    grad_values, indices, W_dec, _ = make_case(6, 13, 37, 4, torch.float32)
    x = torch.randn(6, 13)
    got = kernels.encoder_weight_grad(grad_values, indices, x, 37)
    dense = torch.zeros(6, 37).scatter(1, indices, grad_values)
    torch.testing.assert_close(got, dense.T @ x, rtol=1e-5, atol=1e-5)


def test_a_training_step_sorts_the_indices_once(monkeypatch):
    from randsae.kernels import csr

    builds = []
    real_build = csr._build_latent_csr

    def counting_build(indices, n_latents):
        builds.append(n_latents)
        return real_build(indices, n_latents)

    monkeypatch.setattr(csr, "_build_latent_csr", counting_build)
    csr.clear_latent_csr_memo()
    values, indices, W_dec, grad_out = make_case(6, 13, 37, 4, torch.float32)
    v, W = values.clone().requires_grad_(), W_dec.clone().requires_grad_()
    kernels.sparse_decode(v, indices, W).backward(grad_out)  # decoder-weight grad: sorts
    kernels.encoder_weight_grad(v.grad, indices, torch.randn(6, 13), 37)  # reuses the layout
    assert builds == [37]
