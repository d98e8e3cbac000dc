"""Triton kernels against the torch reference: under the interpreter on CPU, or compiled on CUDA.

Triton fixes its mode per process when triton.language is imported (kernels/triton_mode.py), so
TRITON_INTERPRET=1 cannot be switched on from inside a test. This module therefore runs
  * in-process on CPU tensors when the whole pytest process was started under TRITON_INTERPRET=1,
  * in-process on CUDA tensors when Triton compiles and a GPU is present,
  * otherwise it skips here, and test_kernels_interpreter.py runs it in a subprocess started with
    TRITON_INTERPRET=1 (so a plain ``pytest tests/kernels`` on a CPU machine still checks it).
The interpreter is slow (Python per program instance), hence the tiny shapes; its config uses 4-
and 16-wide blocks so the shapes still span several blocks and masked tails.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from randsae.kernels.triton_mode import interpreted  # noqa: E402

if interpreted():
    DEVICE = "cpu"
elif torch.cuda.is_available():
    DEVICE = "cuda"
else:
    pytest.skip(
        "Triton compiles (no TRITON_INTERPRET=1 at import) and there is no GPU: "
        "test_kernels_interpreter.py runs this module in an interpreter subprocess",
        allow_module_level=True,
    )

import logging  # noqa: E402
import warnings  # noqa: E402

import randsae.kernels as kernels  # noqa: E402
from randsae.kernels import dispatch, encoder_grad, topk_decode  # noqa: E402
from randsae.kernels import reference as ref  # noqa: E402
from randsae.kernels.csr import clear_latent_csr_memo  # noqa: E402

# (N, d, L, k, distinct): d = 13 and 40 (not powers of two; 40 spans three 16-wide blocks),
# L = 37 (not a multiple of 8), k = 1, k = 32 (eight 4-wide blocks), k = L, and repeated ids
# in a row with L = 3 (latent segments of ~15 entries: several 4-wide steps).
SHAPES = [
    (5, 13, 37, 1, True),
    (4, 40, 37, 32, True),
    (3, 16, 8, 8, True),
    (9, 40, 3, 5, False),
]
SHAPE_IDS = ["N{}-d{}-L{}-k{}-{}".format(*s) for s in SHAPES]
# bf16: both sides round an fp32 sum once, in possibly different summation orders: <= 1 ulp apart.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2**-7, atol=1e-2)}


@pytest.fixture(autouse=True)
def fresh_memo():
    clear_latent_csr_memo()


def make_case(n, d, n_latents, k, distinct, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if distinct:
        indices = torch.rand(n, n_latents, generator=gen).argsort(dim=1)[:, :k]
    else:
        indices = torch.randint(0, n_latents, (n, k), generator=gen)
    values = torch.randn(n, k, generator=gen).to(dtype)
    W_dec = torch.randn(n_latents, d, generator=gen).to(dtype)
    grad_out = torch.randn(n, d, generator=gen).to(dtype)
    x = torch.randn(n, d, generator=gen).to(dtype)
    return tuple(t.to(DEVICE) for t in (values, indices, W_dec, grad_out, x))


def check(actual, expected):
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    assert torch.isfinite(actual.float()).all()
    torch.testing.assert_close(actual, expected, **TOL[expected.dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_decode_forward(shape, dtype):
    values, indices, W_dec, _, _ = make_case(*shape, dtype)
    check(
        topk_decode.sparse_decode(values, indices, W_dec),
        ref.sparse_decode_ref(values, indices, W_dec),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_decode_backward(shape, dtype):
    values, indices, W_dec, grad_out, _ = make_case(*shape, dtype)
    grad_values, grad_W = topk_decode.sparse_decode_backward(grad_out, values, indices, W_dec)
    ref_values, ref_W = ref.sparse_decode_backward_ref(grad_out, values, indices, W_dec)
    check(grad_values, ref_values)
    check(grad_W, ref_W)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_encoder_weight_grad(shape, dtype):
    grad_values, indices, W_dec, _, x = make_case(*shape, dtype)
    n_latents = W_dec.shape[0]
    check(
        encoder_grad.sparse_encoder_weight_grad(grad_values, indices, x, n_latents),
        ref.sparse_encoder_weight_grad_ref(grad_values, indices, x, n_latents),
    )


def test_int32_indices_mixed_dtypes_and_strided_inputs():
    values, indices, W_dec, grad_out, x = make_case(6, 13, 37, 4, True, torch.float32)
    idx32 = indices.int()
    W_bf16 = W_dec.bfloat16()
    out = topk_decode.sparse_decode(values, idx32, W_bf16)  # fp32 x bf16 -> fp32
    check(out, ref.sparse_decode_ref(values, indices, W_bf16))
    # Non-contiguous grad_out and x (every other column of a wider tensor).
    wide = torch.randn(6, 26, device=DEVICE)
    gv, gW = topk_decode.sparse_decode_backward(wide[:, ::2], values, idx32, W_dec)
    rv, rW = ref.sparse_decode_backward_ref(wide[:, ::2].contiguous(), values, indices, W_dec)
    check(gv, rv)
    check(gW, rW)
    check(
        encoder_grad.sparse_encoder_weight_grad(values, idx32, wide[:, 1::2], 37),
        ref.sparse_encoder_weight_grad_ref(values, indices, wide[:, 1::2].contiguous(), 37),
    )


def test_weight_gradients_are_deterministic():
    # Latent-major sums in a fixed order: repeated runs agree bit for bit.
    values, indices, W_dec, grad_out, _ = make_case(9, 40, 3, 5, False, torch.float32)
    first = topk_decode.sparse_decode_grad_weight(grad_out, values, indices, W_dec)
    clear_latent_csr_memo()
    second = topk_decode.sparse_decode_grad_weight(grad_out, values, indices, W_dec)
    assert torch.equal(first, second)


def test_latents_that_never_fire_get_zero_rows():
    values, indices, W_dec, grad_out, x = make_case(4, 13, 37, 2, True, torch.float32)
    fired = torch.zeros(37, dtype=torch.bool, device=DEVICE)
    fired[indices.reshape(-1)] = True
    grad_W = topk_decode.sparse_decode_grad_weight(grad_out, values, indices, W_dec)
    grad_enc = encoder_grad.sparse_encoder_weight_grad(values, indices, x, 37)
    assert torch.equal(grad_W[~fired], torch.zeros_like(grad_W[~fired]))
    assert torch.equal(grad_enc[~fired], torch.zeros_like(grad_enc[~fired]))
    assert (grad_W[fired].abs().sum(dim=1) > 0).all()


def test_empty_batch():
    values, indices, W_dec, grad_out, x = make_case(0, 13, 37, 4, False, torch.float32)
    assert topk_decode.sparse_decode(values, indices, W_dec).shape == (0, 13)
    gv, gW = topk_decode.sparse_decode_backward(grad_out, values, indices, W_dec)
    assert gv.shape == (0, 4)
    assert torch.equal(gW, torch.zeros(37, 13, device=DEVICE))
    assert torch.equal(
        encoder_grad.sparse_encoder_weight_grad(values, indices, x, 37),
        torch.zeros(37, 13, device=DEVICE),
    )


def test_forced_triton_backend_routes_through_the_kernels(monkeypatch):
    # set_backend("triton"): SparseDecode and encoder_weight_grad must call the Triton wrappers
    # (spied on) and agree with the torch path, gradients included.
    # The self-check (once per process) calls the kernels too: let it run before the spies.
    assert kernels.self_check(DEVICE, torch.float32).ok
    calls = []

    def spy(module, name):
        real = getattr(module, name)

        def wrapper(*args):
            calls.append(name)
            return real(*args)

        monkeypatch.setattr(module, name, wrapper)

    for name in ("sparse_decode", "sparse_decode_grad_values", "sparse_decode_grad_weight"):
        spy(topk_decode, name)
    spy(encoder_grad, "sparse_encoder_weight_grad")

    values, indices, W_dec, grad_out, x = make_case(7, 40, 37, 5, True, torch.float32)
    kernels.set_backend("triton")  # conftest.py puts 'auto' back afterwards
    assert kernels.backend_for(W_dec) == "triton"
    v, W = values.clone().requires_grad_(), W_dec.clone().requires_grad_()
    out = kernels.sparse_decode(v, indices, W)
    out.backward(grad_out)
    enc = kernels.encoder_weight_grad(v.grad, indices, x, 37)
    assert calls == [
        "sparse_decode",
        "sparse_decode_grad_values",
        "sparse_decode_grad_weight",
        "sparse_encoder_weight_grad",
    ]

    kernels.set_backend("torch")
    v_ref, W_ref = values.clone().requires_grad_(), W_dec.clone().requires_grad_()
    out_ref = kernels.sparse_decode(v_ref, indices, W_ref)
    out_ref.backward(grad_out)
    check(out, out_ref)
    check(v.grad, v_ref.grad)
    check(W.grad, W_ref.grad)
    check(enc, kernels.encoder_weight_grad(v_ref.grad, indices, x, 37))
    assert len(calls) == 4  # the torch run did not touch the kernels


# --- self-check (dispatch.self_check) ---------------------------------------------------------
# A forced 'triton' request, so that the same tests run on CPU tensors under the interpreter and
# on CUDA tensors when compiled ('auto' would pick torch on the CPU without asking Triton).


@pytest.fixture
def fresh_self_check():
    """No cached verdict before the test, and none left behind (a failed one would send every
    later Triton test of this process to the torch path)."""
    kernels.clear_self_checks()
    yield
    kernels.clear_self_checks()


def run_with_recorded_warnings(caplog, fn):
    """fn()'s result, its self-check warnings and the 'randsae.kernels' warning log records."""
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO, "randsae.kernels"):
        warnings.simplefilter("always")  # count every warning, not only the first per place
        result = fn()
    ours = [w for w in caught if issubclass(w.category, kernels.KernelSelfCheckWarning)]
    records = [r for r in caplog.records if r.name == "randsae.kernels" and r.levelno >= logging.WARNING]
    return result, ours, records


def training_ops(values, indices, W_dec, grad_out, x):
    """Decode forward and backward and the encoder-weight gradient through the dispatcher."""
    v, W = values.clone().requires_grad_(), W_dec.clone().requires_grad_()
    out = kernels.sparse_decode(v, indices, W)
    out.backward(grad_out)
    return out, v.grad, W.grad, kernels.encoder_weight_grad(v.grad, indices, x, W_dec.shape[0])


def test_self_check_passes_once_and_stays_on_triton(monkeypatch, caplog, fresh_self_check):
    runs = []
    real_run = dispatch._run_self_check
    monkeypatch.setattr(dispatch, "_run_self_check", lambda d, t: runs.append(t) or real_run(d, t))
    values, indices, W_dec, grad_out, x = make_case(7, 40, 37, 5, True, torch.float32)
    kernels.set_backend("triton")

    def use():
        return [kernels.backend_for(W_dec), kernels.sparse_decode(values, indices, W_dec), kernels.backend_for(x)]

    (first, out, second), ours, records = run_with_recorded_warnings(caplog, use)
    assert (first, second) == ("triton", "triton")
    check(out, ref.sparse_decode_ref(values, indices, W_dec))
    assert ours == [] and records == []
    assert runs == [torch.float32]  # checked once for this device and dtype, then cached
    verdict = kernels.self_check(W_dec.device, torch.float32)
    assert verdict.ok and verdict.kernel is None and verdict.error is None
    assert verdict.device.startswith(DEVICE) and verdict.dtype == "float32"
    assert 0 <= verdict.max_error < 1e-4
    assert any("passed their self-check" in r.getMessage() for r in caplog.records)


def test_a_wrong_kernel_falls_back_to_torch_with_one_warning(monkeypatch, caplog, fresh_self_check):
    real = topk_decode.sparse_decode_grad_weight
    calls = []

    def wrong(grad_out, values, indices, W_dec):  # off by half of every entry
        calls.append(1)
        return real(grad_out, values, indices, W_dec) * 1.5

    monkeypatch.setattr(topk_decode, "sparse_decode_grad_weight", wrong)
    values, indices, W_dec, grad_out, x = make_case(7, 40, 37, 5, True, torch.float32)
    kernels.set_backend("triton")

    def use():
        return [kernels.backend_for(W_dec), training_ops(values, indices, W_dec, grad_out, x), kernels.backend_for(x)]

    (choice, got, again), ours, records = run_with_recorded_warnings(caplog, use)
    assert (choice, again) == ("torch", "torch")
    assert len(ours) == 1 and len(records) == 1  # one warning for the process, not one per call
    message = str(ours[0].message)
    assert message == records[0].getMessage()
    assert "topk_decode.sparse_decode_grad_weight" in message
    assert "max abs error" in message and "tolerance atol 1.0e-04 + rtol 1.0e-04" in message
    assert "torch path" in message and "execution.kernels: torch" in message
    assert calls == [1]  # the broken kernel ran in the check only; training used the torch path
    verdict = kernels.self_check(W_dec.device, torch.float32)
    assert not verdict.ok and verdict.kernel == "topk_decode.sparse_decode_grad_weight"
    assert verdict.max_error > 1e-4
    kernels.set_backend("torch")
    for mine, theirs in zip(got, training_ops(values, indices, W_dec, grad_out, x), strict=True):
        assert torch.equal(mine, theirs)


def test_a_kernel_that_raises_falls_back_to_torch(monkeypatch, caplog, fresh_self_check):
    def broken(values, indices, W_dec):
        raise RuntimeError("PassManager::run failed\n(compiler output)")

    monkeypatch.setattr(topk_decode, "sparse_decode", broken)
    values, indices, W_dec, grad_out, x = make_case(7, 40, 37, 5, True, torch.float32)
    kernels.set_backend("triton")
    (choice, out), ours, records = run_with_recorded_warnings(
        caplog, lambda: [kernels.backend_for(W_dec), kernels.sparse_decode(values, indices, W_dec)]
    )
    assert choice == "torch"
    assert len(ours) == 1 and len(records) == 1
    message = str(ours[0].message)
    assert "topk_decode.sparse_decode failed to compile or run" in message
    assert "RuntimeError: PassManager::run failed" in message and "compiler output" not in message
    check(out, ref.sparse_decode_ref(values, indices, W_dec))
