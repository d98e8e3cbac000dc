"""The SAE's sparse ops are randsae.kernels' torch path (bit for bit on CPU), and top-k selection.

randsae.sae has no sparse-op implementation of its own: TopKSAE decodes and computes the
encoder-weight gradient through randsae.kernels' dispatch, which on CPU tensors runs
kernels/reference.py. The reference itself is tested against a dense oracle in tests/kernels.
"""

from __future__ import annotations

import pytest
import torch
from randsae.kernels import dispatch
from randsae.kernels import reference as ref

from randsae.sae import TopKSAE
from randsae.sae.model import SaeOutput
from randsae.sae.topk import topk_nonneg

D, L, K, N = 12, 96, 5, 37


def _sae_step(backend: str) -> tuple[TopKSAE, torch.Tensor, torch.Tensor, SaeOutput]:
    """One forward/backward of a seeded SAE under ``backend``: (sae, x, grad_x_hat, output)."""
    previous = dispatch.requested_backend()
    dispatch.set_backend(backend)
    try:
        sae = TopKSAE.initialised(D, L, K, seed=0, b_dec=torch.full((D,), 0.1))
        g = torch.Generator().manual_seed(1)
        x = torch.randn(N, D, generator=g)
        grad_x_hat = torch.randn(N, D, generator=g)
        out = sae(x)
        out.x_hat.backward(grad_x_hat)
    finally:
        dispatch.set_backend(previous)
    return sae, x, grad_x_hat, out


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_sae_decode_and_gradients_are_the_kernels_torch_path_bit_for_bit(backend):
    sae, x, grad_x_hat, out = _sae_step(backend)
    values, indices, W_dec = out.values.detach(), out.indices, sae.W_dec.detach()
    assert dispatch.backend_for(W_dec) == "torch"
    assert (values > 0).any()  # non-trivial selections

    assert torch.equal(
        out.x_hat.detach(), ref.sparse_decode_ref(values, indices, W_dec) + sae.b_dec
    )
    assert torch.equal(
        sae.W_dec.grad, ref.sparse_decode_grad_weight_ref(grad_x_hat, values, indices, W_dec)
    )
    # Encoder: the values' gradient, masked by the ReLU, scattered onto [x - b_dec | 1].
    grad_values = ref.sparse_decode_grad_values_ref(grad_x_hat, indices, W_dec, values.dtype)
    grad_values = torch.where(values > 0, grad_values, torch.zeros(()))
    xc_aug = torch.cat([x - sae.b_dec.detach(), torch.ones(N, 1)], dim=1)
    expected_enc = ref.sparse_encoder_weight_grad_ref(grad_values, indices, xc_aug, L)
    assert torch.equal(sae.enc.grad, expected_enc)
    assert expected_enc.abs().sum() > 0


def test_auto_and_forced_torch_give_the_same_bits_on_cpu():
    a, _, _, out_a = _sae_step("auto")
    b, _, _, out_b = _sae_step("torch")
    assert torch.equal(out_a.x_hat, out_b.x_hat)
    assert torch.equal(a.W_dec.grad, b.W_dec.grad)
    assert torch.equal(a.enc.grad, b.enc.grad)
    assert dispatch.requested_backend() == "auto"  # _sae_step restored the request


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_topk_selects_the_same_values_as_torch_topk(dtype):
    pre = torch.randn(50, 2048, generator=torch.Generator().manual_seed(2)).to(dtype)
    pre[3] = -1.0  # a row with no positive entry at all
    pre[4, :5] = 7.0  # a row with ties
    vals, idx = topk_nonneg(pre, 16)
    assert torch.equal(pre.gather(1, idx), vals)
    ref_vals = pre.topk(16, dim=1).values
    relu_sorted = lambda t: t.float().relu().sort(dim=1).values  # noqa: E731
    assert torch.equal(relu_sorted(vals), relu_sorted(ref_vals))
    assert (idx.sort(dim=1).values.diff(dim=1) > 0).all(), "indices must be distinct per row"
