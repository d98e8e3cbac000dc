"""The variants of docs/variants.md on tiny models: statistics, bit-identity, tying, control noise,
step0 methods and reproducibility."""

from __future__ import annotations

import math

import pytest
import torch
from _model_helpers import llama_config, make_trained, neox_config

from randsae.models.arch import get_input_embedding
from randsae.models.artifact import build_model
from randsae.models.sources import ModelSourceError, load_model
from randsae.models.variants import (
    apply_variant,
    control_row_seeds,
    control_seed,
    derive_seed,
    embedding_param_names,
    embeddings_tied,
    init_from_config,
    install_control_hook,
    rerandomize_,
    set_control_seed,
)

# Tolerance for "same mean and std": 6 standard errors of the sample statistic of n i.i.d.
# Gaussian draws (SE of the mean s/sqrt(n), of the std about s/sqrt(2n)), so the check is
# tight for matrices (n = 2048: std within 9 %) and loose for 1-D tensors (n = 32: 75 %).
N_SE = 6.0


def _params(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _models():
    return [make_trained(neox_config(), seed=0), make_trained(llama_config(), seed=1)]


@pytest.mark.parametrize("model", _models(), ids=["neox", "llama"])
def test_rerandomized_keeps_each_tensors_mean_and_std_but_not_its_values(model):
    trained = _params(model)
    apply_variant(model, "rerandomized", seed=7)
    for name, new in model.named_parameters():
        old, n = trained[name], new.numel()
        s = old.std(correction=0).item()
        assert abs(new.mean().item() - old.mean().item()) <= N_SE * s / math.sqrt(n) + 1e-6, name
        assert abs(new.std(correction=0).item() - s) <= N_SE * s / math.sqrt(2 * n) + 1e-6, name
        assert (new == old).float().mean() < 0.01, f"{name} was not redrawn"
    assert any(p.ndim == 1 for p in model.parameters())  # 1-D gains/biases were covered


def test_constant_tensors_stay_constant():
    model = make_trained(neox_config(), seed=0)
    with torch.no_grad():
        model.gpt_neox.final_layer_norm.weight.fill_(0.25)
    apply_variant(model, "rerandomized", seed=0)
    assert torch.all(model.gpt_neox.final_layer_norm.weight == 0.25)


def test_rerandomized_is_reproducible_and_seeded():
    a, b, c = _models()[0], _models()[0], _models()[0]
    apply_variant(a, "rerandomized", seed=3)
    apply_variant(b, "rerandomized", seed=3)
    apply_variant(c, "rerandomized", seed=4)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        assert not torch.equal(pa, pc), name


def test_buffers_are_not_touched():
    model = make_trained(llama_config(), seed=1)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    assert buffers  # rotary inverse frequencies
    apply_variant(model, "rerandomized", seed=0)
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())


@pytest.mark.parametrize("config", [neox_config, llama_config], ids=["neox", "llama"])
def test_no_embed_keeps_embeddings_and_draws_the_rest_like_rerandomized(config):
    """Draws are keyed by parameter name: skipping the embeddings shifts nothing else."""
    trained, full, no_embed = (make_trained(config(), seed=0) for _ in range(3))
    apply_variant(full, "rerandomized", seed=5)
    info = apply_variant(no_embed, "rerandomized_no_embed", seed=5)
    kept = embedding_param_names(trained)
    assert set(info["rerandomization"]["kept"]) == kept
    assert len(kept) == (1 if embeddings_tied(trained) else 2)
    t, f = dict(trained.named_parameters()), dict(full.named_parameters())
    for name, p in no_embed.named_parameters():
        if name in kept:
            assert torch.equal(p, t[name]), name
        else:
            assert torch.equal(p, f[name]), name
    out = no_embed.get_output_embeddings().weight
    assert torch.equal(out, trained.get_output_embeddings().weight)


def test_tied_embeddings_stay_tied_and_are_redrawn_once():
    model = make_trained(llama_config(), seed=1)
    old = model.get_input_embeddings().weight.detach().clone()
    apply_variant(model, "rerandomized", seed=0)
    assert embeddings_tied(model)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert not torch.equal(model.lm_head.weight, old)
    expected = torch.randn(
        old.shape,
        generator=torch.Generator().manual_seed(
            derive_seed(0, "rerandomize", "model.embed_tokens.weight")
        ),
    )
    expected = expected * old.std(correction=0).item() + old.mean().item()
    assert torch.allclose(model.lm_head.weight, expected, atol=1e-6)


def test_untied_embeddings_are_redrawn_separately():
    model = make_trained(neox_config(), seed=0)
    apply_variant(model, "rerandomized", seed=0)
    assert not embeddings_tied(model)
    emb, unemb = model.gpt_neox.embed_in.weight, model.lm_head.weight
    assert emb.shape == unemb.shape and not torch.equal(emb, unemb)


# --- control ---------------------------------------------------------------------------


def _ids() -> torch.Tensor:
    return torch.tensor([[5, 6, 5, 6, 7, 5, 6, 7]])


def test_control_gives_fresh_standard_noise_every_pass():
    model = make_trained(neox_config(), seed=0)
    apply_variant(model, "control", seed=0)
    emb = get_input_embedding(model)
    with torch.no_grad():
        first, second = emb(_ids()), emb(_ids())
    assert first.shape == (1, 8, 32)
    assert not torch.equal(first, second)
    assert not torch.equal(first[0, 0], first[0, 2])  # the same token, two positions
    big = emb(torch.zeros(64, 64, dtype=torch.long))
    assert abs(big.mean().item()) < 0.02 and abs(big.std().item() - 1) < 0.02


def test_control_seeded_rerun_is_identical():
    model = make_trained(neox_config(), seed=0)
    install_control_hook(model, seed=0)
    with torch.no_grad():
        set_control_seed(model, control_row_seeds(0, 3, 1))
        a = model(_ids()).logits
        set_control_seed(model, control_row_seeds(0, 3, 1))
        b = model(_ids()).logits
        set_control_seed(model, control_row_seeds(0, 4, 1))
        c = model(_ids()).logits
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_control_row_seeds_make_noise_independent_of_batching():
    model = make_trained(neox_config(), seed=0)
    install_control_hook(model, seed=0)
    ids = torch.arange(6 * 8).reshape(6, 8) % 50
    with torch.no_grad():
        with control_seed(model, control_row_seeds(0, 0, 6)):
            whole = model(ids).logits
        parts = []
        for b0, b1 in ((0, 4), (4, 6)):  # another batch size, same rows
            with control_seed(model, control_row_seeds(0, b0, b1 - b0)):
                parts.append(model(ids[b0:b1]).logits)
        assert torch.equal(whole, torch.cat(parts))
        with pytest.raises(ValueError, match="2 row seeds for a batch of 6"), \
                control_seed(model, control_row_seeds(0, 0, 2)):
            model(ids)


def test_control_seed_context_does_not_disturb_the_unseeded_stream():
    a, b = (make_trained(neox_config(), seed=0) for _ in range(2))
    for m in (a, b):
        install_control_hook(m, seed=11)
    ea, eb = get_input_embedding(a), get_input_embedding(b)
    ea(_ids())
    with control_seed(a, 99):
        inside = ea(_ids())
    with control_seed(b, 99):
        assert torch.equal(eb(_ids()), inside)
    eb(_ids())
    assert torch.equal(ea(_ids()), eb(_ids()))


def test_control_noise_follows_the_embedding_dtype():
    model = make_trained(llama_config(), seed=1).to(torch.bfloat16)
    apply_variant(model, "control", seed=0)
    out = get_input_embedding(model)(_ids())
    assert out.dtype == torch.bfloat16
    trained = make_trained(llama_config(), seed=1)
    assert all(
        torch.equal(p.float(), q.bfloat16().float())
        for p, q in zip(model.parameters(), trained.parameters())
    )


def test_control_seed_is_a_noop_for_other_variants():
    model = make_trained(neox_config(), seed=0)
    with control_seed(model, 1):
        a = get_input_embedding(model)(_ids())
    assert torch.equal(a, model.gpt_neox.embed_in.weight[_ids()])


# --- step0 -----------------------------------------------------------------------------


def test_step0_from_a_local_step0_revision(neox_dir):
    source = {"kind": "local", "path": str(neox_dir)}
    model, _, info = build_model(source, "step0", seed=0, step0_revision="step0")
    assert info["step0_method"] == "revision" and info["step0_revision"] == "step0"
    expected = load_model({**source, "revision": "step0"})
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), expected.parameters()))
    trained = load_model(source)
    assert not torch.equal(model.gpt_neox.embed_in.weight, trained.gpt_neox.embed_in.weight)


def test_step0_falls_back_to_the_seeded_initialiser(llama_dir):
    source = {"kind": "local", "path": str(llama_dir)}
    rng = torch.get_rng_state()
    a, _, info = build_model(source, "step0", seed=0)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is left alone
    b, _, _ = build_model(source, "step0", seed=0)
    c, _, _ = build_model(source, "step0", seed=1)
    assert info["step0_method"] == "init" and info["step0_revision"] is None
    pairs = list(zip(a.parameters(), b.parameters(), c.parameters()))
    assert all(torch.equal(p, q) for p, q, _ in pairs)
    assert not all(torch.equal(p, r) for p, _, r in pairs)
    assert embeddings_tied(a) and a.dtype == torch.float32
    trained = load_model(source)
    assert not torch.equal(a.model.embed_tokens.weight, trained.model.embed_tokens.weight)


def test_step0_with_a_missing_revision_is_an_error(llama_dir):
    with pytest.raises(ModelSourceError, match="step0"):
        build_model({"kind": "local", "path": str(llama_dir)}, "step0", 0, step0_revision="step0")


def test_unknown_variant_is_rejected(llama_dir):
    with pytest.raises(ValueError, match="unknown model variant"):
        build_model({"kind": "local", "path": str(llama_dir)}, "shuffled", 0)


def test_rerandomize_accepts_a_keep_set():
    model = make_trained(neox_config(), seed=0)
    before = model.lm_head.weight.clone()
    info = rerandomize_(model, seed=0, keep={"lm_head.weight"})
    assert torch.equal(model.lm_head.weight, before) and info["kept"] == ["lm_head.weight"]


def test_initialiser_uses_the_recorded_checkpoint_dtype_unless_told_otherwise():
    config = llama_config()
    config.dtype = "bfloat16"  # e.g. a checkpoint published in bf16
    assert init_from_config(config, seed=0).dtype == torch.bfloat16
    assert init_from_config(config, seed=0, dtype=torch.float32).dtype == torch.float32
