"""The torch path (kernels/reference.py) against an independent dense float64 oracle.

The reference defines the semantics the Triton kernels are tested against and is also the CPU
training path, so it is checked for values, dtypes, and for not allocating N x L (or N x k x d).
"""

from __future__ import annotations

import pytest
import torch
from randsae.kernels import reference as ref
from randsae.kernels.csr import clear_latent_csr_memo, latent_csr
from torch.profiler import ProfilerActivity, profile

# (N, d, L, k, distinct): d not a power of two, L not a multiple of 8, k = 1, k = L, large k,
# and one case with repeated ids in a row (long latent segments).
SHAPES = [
    (5, 13, 37, 1, True),
    (4, 40, 37, 32, True),
    (3, 16, 8, 8, True),
    (9, 40, 3, 5, False),
]


def make_case(n, d, n_latents, k, distinct, dtype, seed=0, index_dtype=torch.int64):
    gen = torch.Generator().manual_seed(seed)
    if distinct:
        indices = torch.rand(n, n_latents, generator=gen).argsort(dim=1)[:, :k]
    else:
        indices = torch.randint(0, n_latents, (n, k), generator=gen)
    values = torch.randn(n, k, generator=gen).to(dtype)
    W_dec = torch.randn(n_latents, d, generator=gen).to(dtype)
    grad_out = torch.randn(n, d, generator=gen).to(dtype)
    x = torch.randn(n, d, generator=gen).to(dtype)
    return values, indices.to(index_dtype), W_dec, grad_out, x


def dense_pattern(weights, indices, n_latents):
    """[N, L] float64 matrix with weights[n, j] added at (n, indices[n, j])."""
    n, k = indices.shape
    dense = torch.zeros(n, n_latents, dtype=torch.float64)
    rows = torch.arange(n).repeat_interleave(k)
    dense.index_put_(
        (rows, indices.reshape(-1).long()), weights.double().reshape(-1), accumulate=True
    )
    return dense


def oracle(values, indices, W_dec, grad_out, x):
    """All four quantities via dense float64 matmuls over the [N, L] pattern."""
    n_latents = W_dec.shape[0]
    S = dense_pattern(values, indices, n_latents)
    W = W_dec.double()
    decode = S @ W
    grad_values = (grad_out.double() @ W.T).gather(1, indices.long())
    grad_W = S.T @ grad_out.double()
    grad_W_enc = dense_pattern(grad_values, indices, n_latents).T @ x.double()
    return decode, grad_values, grad_W, grad_W_enc


def assert_close_to(actual, expected64, dtype):
    """fp32/fp64: tight. bf16: within two bf16 ulps (the kernels round an fp32 result once)."""
    assert actual.dtype == dtype
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2**-7}[dtype]
    torch.testing.assert_close(actual.double(), expected64, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N{}-d{}-L{}-k{}-{}".format(*s))
def test_torch_path_matches_dense_oracle(shape, dtype):
    values, indices, W_dec, grad_out, x = make_case(*shape, dtype)
    decode, grad_values, grad_W, grad_W_enc = oracle(values, indices, W_dec, grad_out, x)
    # The encoder gradient is fed the oracle's grad_values rounded to dtype, like a trainer would.
    gv_in = grad_values.to(dtype)
    enc_expected = dense_pattern(gv_in, indices, W_dec.shape[0]).T @ x.double()

    assert_close_to(ref.sparse_decode_ref(values, indices, W_dec), decode, dtype)
    gv, gW = ref.sparse_decode_backward_ref(grad_out, values, indices, W_dec)
    assert_close_to(gv, grad_values, dtype)
    assert_close_to(gW, grad_W, dtype)
    enc = ref.sparse_encoder_weight_grad_ref(gv_in, indices, x, W_dec.shape[0])
    assert_close_to(enc, enc_expected, dtype)
    assert grad_W_enc.shape == enc.shape


def test_int32_indices_and_mixed_dtypes():
    values, indices, W_dec, grad_out, x = make_case(6, 13, 37, 4, True, torch.float32)
    decode, grad_values, grad_W, _ = oracle(values, indices, W_dec, grad_out, x)
    idx32 = indices.int()
    assert_close_to(ref.sparse_decode_ref(values, idx32, W_dec), decode, torch.float32)
    gv, gW = ref.sparse_decode_backward_ref(grad_out, values, idx32, W_dec)
    assert_close_to(gv, grad_values, torch.float32)
    assert_close_to(gW, grad_W, torch.float32)
    # fp32 activations with a bf16 decoder: output promotes to fp32, gradients keep input dtypes.
    W_bf16 = W_dec.bfloat16()
    out = ref.sparse_decode_ref(values, indices, W_bf16)
    assert out.dtype == torch.float32
    expected = dense_pattern(values, indices, 37) @ W_bf16.double()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    gv, gW = ref.sparse_decode_backward_ref(grad_out, values, indices, W_bf16)
    assert (gv.dtype, gW.dtype) == (torch.float32, torch.bfloat16)


def test_grad_values_fallback_matches_oracle():
    values, indices, W_dec, grad_out, x = make_case(9, 40, 3, 5, False, torch.float32)
    _, grad_values, _, _ = oracle(values, indices, W_dec, grad_out, x)
    got = ref._grad_values_by_gather(grad_out, indices, W_dec, chunk=4)  # 3 chunks, last partial
    assert_close_to(got, grad_values, torch.float32)


def _largest_allocation(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    sizes = [e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0]
    return max(sizes, default=0)


def test_torch_path_never_allocates_n_by_latents_or_gathered_rows():
    # N*L*4 = 4 MiB and N*k*d*4 = 1 MiB, while the largest legitimate array (the [L, d] weight
    # gradient) is 256 KiB: allowing twice that (library-internal padding) still catches any
    # dense [N, L] or gathered [N, k, d] intermediate.
    n, d, n_latents, k = 512, 32, 2048, 16
    values, indices, W_dec, grad_out, x = make_case(n, d, n_latents, k, True, torch.float32)
    limit = 2 * n_latents * d * 4
    assert _largest_allocation(lambda: ref.sparse_decode_ref(values, indices, W_dec)) <= limit
    assert (
        _largest_allocation(
            lambda: ref.sparse_decode_backward_ref(grad_out, values, indices, W_dec)
        )
        <= limit
    )
    assert (
        _largest_allocation(
            lambda: ref.sparse_encoder_weight_grad_ref(values, indices, x, n_latents)
        )
        <= limit
    )
    # The check itself can fail: the naive gather formulation trips it.
    assert _largest_allocation(lambda: W_dec[indices]) > limit


def test_latent_csr_layout_memo_and_range_check():
    clear_latent_csr_memo()
    indices = torch.tensor([[2, 0], [0, 1], [2, 0]])
    csr = latent_csr(indices, 4)
    assert csr.offsets.tolist() == [0, 3, 4, 6, 6]  # latent 3 never fires
    assert csr.perm.tolist() == [1, 2, 5, 3, 0, 4]  # stable: ascending token within a latent
    assert csr.tokens().tolist() == [0, 1, 2, 1, 0, 2]
    assert latent_csr(indices, 4) is csr  # memoised for the same tensor
    indices[1, 1] = 3  # an in-place write bumps the version: the layout is rebuilt
    rebuilt = latent_csr(indices, 4)
    assert rebuilt is not csr
    assert rebuilt.offsets.tolist() == [0, 3, 3, 5, 6]
    with pytest.raises(IndexError, match=r"\[0, 3\)"):
        latent_csr(indices, 3)


def test_latent_csr_offsets_are_the_bounds_of_the_sorted_ids():
    # The CPU counts entries per latent; that must equal binary-searching the sorted ids (what
    # CUDA does), including latents that never fire and long runs of one id.
    clear_latent_csr_memo()
    indices = torch.randint(0, 50, (300, 7), generator=torch.Generator().manual_seed(4)) * 2
    csr = latent_csr(indices, 103)  # odd ids and 100..102 never occur
    sorted_ids = indices.reshape(-1).sort(stable=True).values
    assert torch.equal(csr.offsets, torch.searchsorted(sorted_ids, torch.arange(104)))
    assert csr.offsets.dtype == torch.int64
    assert torch.equal(indices.reshape(-1)[csr.perm], sorted_ids)
    assert csr.tokens() is csr.tokens()  # computed once per layout
    assert torch.equal(csr.tokens(), csr.perm // 7)


def test_empty_batch():
    values, indices, W_dec, grad_out, x = make_case(0, 13, 37, 4, False, torch.float32)
    assert ref.sparse_decode_ref(values, indices, W_dec).shape == (0, 13)
    gv, gW = ref.sparse_decode_backward_ref(grad_out, values, indices, W_dec)
    assert gv.shape == (0, 4)
    assert torch.equal(gW, torch.zeros(37, 13))
    assert torch.equal(
        ref.sparse_encoder_weight_grad_ref(values, indices, x, 37), torch.zeros(37, 13)
    )
