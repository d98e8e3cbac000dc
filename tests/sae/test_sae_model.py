"""TopKSAE: hand-written backward vs dense autograd, decoder constraints, AuxK selection, save/load."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from randsae.sae import SaeConfig, TopKSAE
from randsae.sae import model as model_mod
from randsae.sae.trainer import auxk_loss

D, L, K = 12, 96, 4


def _sae(seed: int = 0, n_latents: int = L) -> TopKSAE:
    sae = TopKSAE.initialised(D, n_latents, K, seed=seed, b_dec=torch.full((D,), 0.1))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed))
    return sae


def _grads(sae: TopKSAE) -> dict[str, torch.Tensor]:
    """Gradients per logical tensor (W_enc and b_enc share the parameter ``enc``)."""
    return {
        "W_enc": sae.enc.grad[:, : sae.d_model],
        "b_enc": sae.enc.grad[:, sae.d_model],
        "W_dec": sae.W_dec.grad,
        "b_dec": sae.b_dec.grad,
    }


def _params(sae: TopKSAE) -> dict[str, torch.Tensor]:
    names = ("W_enc", "b_enc", "W_dec", "b_dec")
    return {n: getattr(sae, n).detach().clone().requires_grad_() for n in names}


def _dense_reference(params, x, k, dead=None, k_aux=0):
    """The same SAE written densely with plain autograd: ReLU, top-k mask, matmul decode."""
    pre = torch.relu((x - params["b_dec"]) @ params["W_enc"].T + params["b_enc"])
    mask = torch.zeros_like(pre).scatter(1, pre.topk(k, dim=1).indices, 1.0)
    x_hat = (pre * mask) @ params["W_dec"] + params["b_dec"]
    if dead is None:
        return x_hat, None
    aux_pre = torch.where(dead, pre, torch.full_like(pre, -1.0))
    aux_mask = torch.zeros_like(pre).scatter(1, aux_pre.topk(k_aux, dim=1).indices, 1.0)
    return x_hat, (pre * aux_mask * dead) @ params["W_dec"]


@pytest.mark.parametrize(
    ("with_aux", "n_latents"),
    [(False, L), (True, L), (True, 2048)],  # 2048: the grouped top-k path (topk.py)
)
def test_hand_written_backward_equals_dense_autograd(with_aux, n_latents):
    sae = _sae(n_latents=n_latents)
    x = torch.randn(40, D, generator=torch.Generator().manual_seed(5))
    dead = torch.zeros(n_latents, dtype=torch.bool)
    dead[::3] = True
    k_aux = 6
    out = sae(x, dead if with_aux else None, k_aux if with_aux else 0)
    loss = (out.x_hat - x).pow(2).sum()
    if with_aux:
        loss = loss + auxk_loss(sae, out.aux_values, out.aux_indices, (x - out.x_hat).detach())
    loss.backward()

    ref = _params(sae)
    x_hat, aux_hat = _dense_reference(ref, x, K, dead if with_aux else None, k_aux)
    ref_loss = (x_hat - x).pow(2).sum()
    if with_aux:
        resid = (x - x_hat).detach()
        ref_loss = ref_loss + (aux_hat - resid).pow(2).sum() / (resid - resid.mean(0)).pow(2).sum()
    ref_loss.backward()
    torch.testing.assert_close(out.x_hat, x_hat)
    for name, g in _grads(sae).items():
        torch.testing.assert_close(g, ref[name].grad, msg=name)


def test_auxk_only_involves_dead_latents():
    sae = _sae(1)
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(6))
    dead = torch.zeros(L, dtype=torch.bool)
    dead[torch.tensor([3, 17, 40, 41, 90])] = True
    out = sae(x, dead, k_aux=3)
    assert dead[out.aux_indices].all()
    resid = (x - out.x_hat).detach()
    auxk_loss(sae, out.aux_values, out.aux_indices, resid).backward()
    for name in ("W_enc", "b_enc", "W_dec"):
        touched = _grads(sae)[name].reshape(L, -1).abs().sum(dim=1) > 0
        assert touched.any() and not touched[~dead].any(), name
    # no dead latents -> no AuxK selection at all
    assert sae(x, torch.zeros(L, dtype=torch.bool), k_aux=3).aux_values is None


def test_parallel_gradient_component_is_removed():
    sae = _sae(2)
    x = torch.randn(32, D, generator=torch.Generator().manual_seed(7))
    sae(x).x_hat.pow(2).sum().backward()
    before = torch.linalg.vecdot(sae.W_dec.grad, sae.W_dec)
    assert before.abs().max() > 1e-3
    sae.remove_parallel_decoder_grad_()
    after = torch.linalg.vecdot(sae.W_dec.grad, sae.W_dec)
    assert after.abs().max() < 1e-5


def test_decoder_rows_unit_norm_after_optimizer_steps(
    tmp_path, make_acts, sparse_mixture, small_cfg
):
    from randsae.sae import train_sae

    acts = make_acts(sparse_mixture(1280, D))
    train_sae(acts, tmp_path / "out", small_cfg(), tmp_path / "ck", progress=False)
    sae = TopKSAE.load(tmp_path / "out")
    norms = torch.linalg.vector_norm(sae.W_dec, dim=1)
    torch.testing.assert_close(norms, torch.ones(sae.n_latents), atol=1e-6, rtol=0)
    # the decoder moved away from its initialisation, so the norms were actually re-imposed
    init = TopKSAE.initialised(D, sae.n_latents, sae.k, seed=0)
    assert not torch.allclose(sae.W_dec, init.W_dec)


def test_init_ties_decoder_to_encoder_and_is_seeded():
    a, b = TopKSAE.initialised(D, L, K, seed=3), TopKSAE.initialised(D, L, K, seed=3)
    assert torch.equal(a.W_enc, b.W_enc)
    assert not torch.equal(a.W_enc, TopKSAE.initialised(D, L, K, seed=4).W_enc)
    unit = a.W_enc / a.W_enc.norm(dim=1, keepdim=True)
    torch.testing.assert_close(a.W_dec, unit)


def test_blocked_encoder_equals_single_block(monkeypatch):
    sae = _sae(3)
    x = torch.randn(50, D, generator=torch.Generator().manual_seed(8))
    v1, i1 = sae.encode(x)
    monkeypatch.setattr(model_mod, "CPU_BLOCK_ELEMS", L * 7)  # blocks of 7 rows
    sae._ws.clear()
    v2, i2 = sae.encode(x)
    # GEMMs of different heights may round differently; the selection must agree
    torch.testing.assert_close(v1, v2)
    assert torch.equal(i1.sort(dim=1).values, i2.sort(dim=1).values)


def test_saved_files_are_byte_identical_across_processes(tmp_path):
    """Same weights -> same bytes, in any process (safetensors writes its metadata map in a
    per-process hash order, so the file must not carry more than one metadata entry)."""
    script = (
        "import sys, torch; from randsae.sae import TopKSAE; "
        "TopKSAE.initialised(12, 96, 4, seed=0, b_dec=torch.zeros(12)).save(sys.argv[1])"
    )
    names = [f"p{i}" for i in range(8)]  # with two entries, 8 processes agree with chance 1/128
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / n)]) for n in names]
    assert [p.wait() for p in procs] == [0] * len(names)
    assert len({(tmp_path / n / model_mod.WEIGHTS_FILE).read_bytes() for n in names}) == 1


def test_save_load_round_trip(tmp_path):
    sae = _sae(4)
    sae.config = SaeConfig(expansion_factor=8, k=K, seed=4)
    sae.save(tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert (meta["d_model"], meta["n_latents"], meta["k"], meta["format_version"]) == (D, L, K, 1)
    loaded = TopKSAE.load(tmp_path / "s")
    for name, p in sae.named_parameters():
        assert torch.equal(p, getattr(loaded, name)), name
    assert loaded.config == sae.config
    x = torch.randn(9, D)
    assert torch.equal(sae(x).x_hat, loaded(x).x_hat)


def test_load_rejects_wrong_shapes_and_versions(tmp_path):
    _sae().save(tmp_path / "s")
    meta_path = tmp_path / "s" / "cfg.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "n_latents": L + 1}))
    with pytest.raises(ValueError, match="W_enc"):
        TopKSAE.load(tmp_path / "s")
    meta_path.write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ValueError, match="v99"):
        TopKSAE.load(tmp_path / "s")


@pytest.mark.parametrize("rows", [1, 255, 256, 700])
def test_rowwise_dot_equals_vecdot(rows: int) -> None:
    from randsae.sae.model import rowwise_dot

    g = torch.Generator().manual_seed(rows)
    a, b = torch.randn(rows, 37, generator=g), torch.randn(rows, 37, generator=g)
    torch.testing.assert_close(rowwise_dot(a, b), torch.linalg.vecdot(a, b), rtol=1e-6, atol=1e-6)
    assert not torch.equal(rowwise_dot(a, b), rowwise_dot(a, -b))


def test_sum_of_squares_value_and_gradient() -> None:
    from randsae.sae.stats import sum_of_squares, total_variance

    g = torch.Generator().manual_seed(3)
    x = torch.randn(50, 9, generator=g, dtype=torch.float64, requires_grad=True)
    y = x.detach().clone().requires_grad_(True)
    sum_of_squares(x * 3).backward()
    (y * 3).pow(2).sum().backward()
    assert x.grad is not None and y.grad is not None
    torch.testing.assert_close(x.grad, y.grad)
    torch.testing.assert_close(sum_of_squares(x.detach()), x.detach().pow(2).sum())
    xd = x.detach()
    torch.testing.assert_close(total_variance(xd), (xd - xd.mean(0)).pow(2).sum().float())
