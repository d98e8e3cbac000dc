"""Sparse ops and top-k selection against the pure-torch references in kernels/reference.py."""

from __future__ import annotations

import pytest
import torch
from randsae.kernels.reference import (
    sparse_decode_backward_ref,
    sparse_decode_ref,
    sparse_encoder_weight_grad_ref,
)

from randsae.sae import ops
from randsae.sae.topk import topk_nonneg


def _case(n=37, k=5, n_lat=64, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(n, k, generator=g)
    indices = torch.rand(n, n_lat, generator=g).argsort(dim=1)[:, :k]
    W = torch.randn(n_lat, d, generator=g)
    return values, indices, W


def test_decode_and_its_backward_match_reference():
    values, indices, W = _case()
    v = values.clone().requires_grad_()
    w = W.clone().requires_grad_()
    out = ops.decode(v, indices, w)
    torch.testing.assert_close(out, sparse_decode_ref(values, indices, W))
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    ref_gv, ref_gw = sparse_decode_backward_ref(grad_out, values, indices, W)
    torch.testing.assert_close(v.grad, ref_gv)
    torch.testing.assert_close(w.grad, ref_gw)


def test_gather_dot_paths_agree():
    values, indices, W = _case(seed=3)
    g = torch.randn(values.shape[0], W.shape[1])
    ref = torch.einsum("nd,nkd->nk", g, W[indices])
    torch.testing.assert_close(ops._gather_dot(g, W, indices), ref)
    torch.testing.assert_close(ops._gather_dot(g, W, indices, use_aten=False), ref)


def test_encoder_weight_grad_matches_reference_and_is_deterministic():
    values, indices, W = _case(seed=1)
    x = torch.randn(values.shape[0], 9)
    got = ops.encoder_weight_grad(values, indices, x, W.shape[0])
    torch.testing.assert_close(got, sparse_encoder_weight_grad_ref(values, indices, x, W.shape[0]))
    assert torch.equal(got, ops.encoder_weight_grad(values, indices, x, W.shape[0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_topk_selects_the_same_values_as_torch_topk(dtype):
    pre = torch.randn(50, 2048, generator=torch.Generator().manual_seed(2)).to(dtype)
    pre[3] = -1.0  # a row with no positive entry at all
    pre[4, :5] = 7.0  # a row with ties
    vals, idx = topk_nonneg(pre, 16)
    assert torch.equal(pre.gather(1, idx), vals)
    ref = pre.topk(16, dim=1).values
    relu_sorted = lambda t: t.float().relu().sort(dim=1).values  # noqa: E731
    assert torch.equal(relu_sorted(vals), relu_sorted(ref))
    assert (idx.sort(dim=1).values.diff(dim=1) > 0).all(), "indices must be distinct per row"
