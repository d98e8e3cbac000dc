"""Spliced CE/KL: equal to independent hooked full forwards, prefix computed once."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from metrics_fixtures import HIDDEN, N_LAYERS, TinyTopK, build_model
from torch import nn

from randsae.metrics import SparseCoder
from randsae.metrics.downstream import (
    DownstreamStats,
    SaeEval,
    evaluate_batch,
    evaluate_batch_group,
    prediction_mask,
)
from randsae.metrics.splice import clean_forward, spliced_logits
from randsae.metrics.stats import ReconstructionStats
from randsae.models.arch import get_blocks, get_input_embedding

LAYERS = list(range(N_LAYERS))


def hooked_logits(
    model: nn.Module, ids: torch.Tensor, layer: int, replace=None, attention_mask=None
):
    """Reference: one full forward; ``replace(h) -> h'`` swaps block ``layer``'s output."""
    handle = None
    if replace is not None:

        def hook(_m, _a, out):
            h = out[0] if isinstance(out, tuple) else out
            new = replace(h)
            return (new, *out[1:]) if isinstance(out, tuple) else new

        handle = get_blocks(model)[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=attention_mask, use_cache=False).logits
    finally:
        if handle is not None:
            handle.remove()


def reference_metrics(model, sae, ids, layer, attention_mask=None):
    """CE and KL from three independent hooked forwards, computed the textbook way."""

    def sae_replace(h):
        b, t, d = h.shape
        v, i = sae.encode(h.reshape(b * t, d))
        return sae.decode(v, i).reshape(b, t, d)

    clean = hooked_logits(model, ids, layer, None, attention_mask)
    spl = hooked_logits(model, ids, layer, sae_replace, attention_mask)
    zero = hooked_logits(model, ids, layer, torch.zeros_like, attention_mask)
    mask = prediction_mask(ids, attention_mask)
    tgt = ids[:, 1:][mask]

    def ce(logits):
        return F.cross_entropy(logits[:, :-1][mask].double(), tgt).item()

    def kl(logits):
        lp_c = torch.log_softmax(clean[:, :-1][mask].double(), -1)
        lp_b = torch.log_softmax(logits[:, :-1][mask].double(), -1)
        return F.kl_div(lp_b, lp_c, log_target=True, reduction="batchmean").item()

    return {
        "ce_clean": ce(clean), "ce_sae": ce(spl), "ce_zero": ce(zero),
        "kl_sae": kl(spl), "kl_zero": kl(zero),
    }  # fmt: skip


def test_tiny_sae_is_a_sparse_coder(tiny_sae: TinyTopK) -> None:
    assert isinstance(tiny_sae, SparseCoder)


@pytest.mark.parametrize("layer", LAYERS)
def test_spliced_logits_equal_hooked_full_forward(tiny_model, token_ids, layer: int) -> None:
    _, model = tiny_model
    g = torch.Generator().manual_seed(layer)
    prefix = clean_forward(model, token_ids, layer)
    torch.testing.assert_close(
        prefix.logits, hooked_logits(model, token_ids, layer), rtol=0, atol=0
    )
    h_new = torch.randn(prefix.hidden.shape, generator=g)
    torch.testing.assert_close(
        spliced_logits(model, prefix, h_new),
        hooked_logits(model, token_ids, layer, lambda h: h_new),
        rtol=1e-6, atol=1e-6,
    )  # fmt: skip
    # Zero branch computed for one sequence equals the full-batch zero forward, row by row.
    zero_one = spliced_logits(model, prefix, prefix.hidden.new_zeros(1, *prefix.hidden.shape[1:]))
    zero_all = hooked_logits(model, token_ids, layer, torch.zeros_like)
    torch.testing.assert_close(zero_one.expand_as(zero_all), zero_all, rtol=1e-6, atol=1e-6)
    # The model is left as it was: no patched forward, and plain forwards are unchanged.
    assert all("forward" not in b.__dict__ for b in get_blocks(model))
    torch.testing.assert_close(
        hooked_logits(model, token_ids, layer), prefix.logits, rtol=0, atol=0
    )


@pytest.mark.parametrize("layer", LAYERS)
def test_evaluate_batch_matches_three_independent_forwards(
    tiny_model, tiny_sae, token_ids, layer
) -> None:
    _, model = tiny_model
    ds = DownstreamStats()
    evaluate_batch(model, tiny_sae, token_ids, layer, tiny_sae.n_latents, ds)
    r = ds.result("trained")
    ref = reference_metrics(model, tiny_sae, token_ids, layer)
    for name, value in ref.items():
        assert getattr(r, name) == pytest.approx(value, rel=1e-5, abs=1e-6), name
    b, t = token_ids.shape
    assert r.ce_n_tokens == b * (t - 1)
    assert r.kl_zero > 0.05 and r.kl_sae > 1e-4  # the branches really differ from clean
    assert r.ce_loss_score == pytest.approx((r.ce_zero - r.ce_sae) / (r.ce_zero - r.ce_clean))
    assert r.kl_score == pytest.approx((r.kl_zero - r.kl_sae) / r.kl_zero)
    assert r.delta_ce == pytest.approx(r.ce_sae - r.ce_clean)


def test_prefix_runs_once(tiny_model, tiny_sae, token_ids) -> None:
    """Embedding and blocks 0..layer compute once per batch; later blocks once per branch."""
    _, model = tiny_model
    layer = 1
    blocks = get_blocks(model)
    calls: dict[str, int] = {}

    def counter(name):
        def hook(*_):
            calls[name] = calls.get(name, 0) + 1

        return hook

    handles = [get_input_embedding(model).register_forward_hook(counter("embed"))]
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_hook(counter(f"block{i}")))
        first_child = next(iter(block.children()))  # a submodule doing real work
        handles.append(first_child.register_forward_hook(counter(f"block{i}.child")))
    try:
        evaluate_batch(model, tiny_sae, token_ids, layer, tiny_sae.n_latents, DownstreamStats())
    finally:
        for h in handles:
            h.remove()
    assert calls["embed"] == 1
    for i in range(layer + 1):
        assert calls[f"block{i}"] == 1 and calls[f"block{i}.child"] == 1, i
    for i in range(layer + 1, N_LAYERS):
        assert calls[f"block{i}"] == 3 and calls[f"block{i}.child"] == 3, i


def test_chunking_does_not_change_downstream(tiny_model, tiny_sae, token_ids) -> None:
    _, model = tiny_model
    whole = DownstreamStats()
    evaluate_batch(model, tiny_sae, token_ids, 1, tiny_sae.n_latents, whole)
    parts = [DownstreamStats(), DownstreamStats()]
    evaluate_batch(model, tiny_sae, token_ids[:1], 1, tiny_sae.n_latents, parts[0])
    evaluate_batch(model, tiny_sae, token_ids[1:], 1, tiny_sae.n_latents, parts[1])
    merged = parts[0].merge(parts[1])
    a, b = whole.result("trained"), merged.result("trained")
    assert a.ce_n_tokens == b.ce_n_tokens
    for name in ("ce_clean", "ce_sae", "ce_zero", "kl_sae", "kl_zero", "ce_loss_score", "kl_score"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-6), name


def test_control_noise_is_shared_across_branches(tiny_model, token_ids) -> None:
    """A control-style hook replaces the input embedding with fresh noise on every call.

    evaluate/splice must call it once per batch, and the three branches must equal three
    independent full forwards that all see that same noise.
    """
    _, model = tiny_model
    layer = 1
    emb = get_input_embedding(model)
    state = {"calls": 0, "gen": torch.Generator().manual_seed(123)}

    def noise(_m, _a, out):
        state["calls"] += 1
        return torch.randn(out.shape, generator=state["gen"], dtype=out.dtype)

    handle = emb.register_forward_hook(noise)
    try:
        prefix = clean_forward(model, token_ids, layer)
        h_sae = prefix.hidden * 0.5 + 0.1
        branches = {
            "clean": prefix.logits,
            "sae": spliced_logits(model, prefix, h_sae),
            "zero": spliced_logits(model, prefix, torch.zeros_like(prefix.hidden)),
        }
        assert state["calls"] == 1
        replace = {"clean": None, "sae": lambda h: h * 0.5 + 0.1, "zero": torch.zeros_like}
        for name, fn in replace.items():
            state["gen"].manual_seed(123)  # the same noise as the prefix call
            ref = hooked_logits(model, token_ids, layer, fn)
            torch.testing.assert_close(branches[name], ref, rtol=1e-6, atol=1e-6, msg=name)
        # Sanity: fresh noise would have given a different clean forward.
        other = hooked_logits(model, token_ids, layer)
        assert not torch.allclose(other, branches["clean"])
    finally:
        handle.remove()


def test_hooks_on_bypassed_blocks_are_restored(tiny_model, token_ids) -> None:
    _, model = tiny_model
    block0 = get_blocks(model)[0]
    seen = []
    handle = block0.register_forward_hook(lambda *_: seen.append(1))
    try:
        prefix = clean_forward(model, token_ids, 1)
        spliced_logits(model, prefix, prefix.hidden)
        assert len(seen) == 1
        model(input_ids=token_ids)
        assert len(seen) == 2  # still registered afterwards
    finally:
        handle.remove()


def test_padding_and_excluded_targets() -> None:
    model = build_model("llama")
    sae = TinyTopK(HIDDEN, 4 * HIDDEN, k=4)
    ids = torch.randint(0, 64, (3, 10), generator=torch.Generator().manual_seed(5))
    attn = torch.ones_like(ids)
    attn[1, -3:] = 0  # right padding
    ds = DownstreamStats()
    evaluate_batch(model, sae, ids, 1, sae.n_latents, ds, attention_mask=attn)
    r = ds.result("trained")
    ref = reference_metrics(model, sae, ids, 1, attention_mask=attn)
    for name, value in ref.items():
        assert getattr(r, name) == pytest.approx(value, rel=1e-5, abs=1e-6), name
    assert r.ce_n_tokens == 3 * 9 - 3


def test_prediction_mask_rule() -> None:
    ids = torch.tensor([[5, 0, 7, 8], [1, 2, 0, 3]])
    attn = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    mask = prediction_mask(ids, attn, exclude_target_ids=[0])
    # Predictions t -> t+1 for t = 0..2. Row 0: target 0 excluded at t=0. Row 1: target 0
    # excluded at t=1, target position 3 is padding at t=2.
    assert mask.tolist() == [[False, True, True], [True, False, False]]
    assert prediction_mask(ids).all() and prediction_mask(ids).shape == (2, 3)
    with pytest.raises(ValueError):
        prediction_mask(ids[:, :1])


def test_flags() -> None:
    base = {"n_tokens": 10, "nll_clean": 30.0, "nll_sae": 35.0, "nll_zero": 80.0}
    r = DownstreamStats(**base, kl_sae=2.0, kl_zero=40.0).result("trained")
    assert r.ce_loss_score == pytest.approx(0.9) and r.kl_score == pytest.approx(0.95)
    assert not r.ce_score_unstable and not r.kl_score_unstable and r.ce_score_meaningful
    # A random model: clean and zero CE nearly equal -> unstable, and not meaningful anyway.
    r2 = DownstreamStats(10, 108.0, 108.2, 108.5, 0.1, 0.5).result("rerandomized")
    assert r2.ce_score_unstable and r2.kl_score_unstable and not r2.ce_score_meaningful
    assert (
        not DownstreamStats(**base, kl_sae=1.0, kl_zero=5.0).result("control").ce_score_meaningful
    )
    r3 = DownstreamStats(10, 5.0, 6.0, 5.0, 0.0, 0.0).result("trained")
    assert math.isnan(r3.ce_loss_score) and math.isnan(r3.kl_score) and r3.ce_score_unstable


def test_model_in_training_mode_is_refused(token_ids) -> None:
    model = build_model("gpt_neox").train()
    with pytest.raises(ValueError, match="training mode"):
        clean_forward(model, token_ids, 0)
    with pytest.raises(ValueError, match="out of range"):
        clean_forward(model.eval(), token_ids, N_LAYERS)


def test_zero_branch_per_sequence_matches_shared(tiny_model, tiny_sae, token_ids) -> None:
    _, model = tiny_model
    shared, per_seq = DownstreamStats(), DownstreamStats()
    evaluate_batch(model, tiny_sae, token_ids, 1, tiny_sae.n_latents, shared)
    evaluate_batch(
        model, tiny_sae, token_ids, 1, tiny_sae.n_latents, per_seq, single_zero_sequence=False
    )
    a, b = shared.result("trained"), per_seq.result("trained")
    assert a.ce_zero == pytest.approx(b.ce_zero, rel=1e-6)
    assert a.kl_zero == pytest.approx(b.kl_zero, rel=1e-5)


def test_zero_cache_runs_the_zero_branch_once_per_evaluation(tiny_model, tiny_sae, token_ids) -> None:
    """With a zero cache the last block runs 2 times per batch after the first (clean, SAE),
    and the statistics are exactly those of evaluating every batch in full."""
    _, model = tiny_model
    last = get_blocks(model)[N_LAYERS - 1]
    calls = {"n": 0}
    handle = last.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    halves = (token_ids[:2], token_ids[2:])  # two batches of the same length
    cached, full, cache = DownstreamStats(), DownstreamStats(), {}
    try:
        for ids in halves:
            evaluate_batch(model, tiny_sae, ids, 1, tiny_sae.n_latents, cached, zero_cache=cache)
        n_cached = calls["n"]
        for ids in halves:
            evaluate_batch(model, tiny_sae, ids, 1, tiny_sae.n_latents, full)
    finally:
        handle.remove()
    assert n_cached == 3 + 2 and calls["n"] - n_cached == 3 + 3
    assert len(cache) == 1
    for name in ("n_tokens", "nll_clean", "nll_sae", "nll_zero", "kl_sae", "kl_zero"):
        assert getattr(cached, name) == getattr(full, name), name


def test_bf16_model_with_fp32_sae(tiny_sae, token_ids) -> None:
    model = build_model("llama").to(torch.bfloat16)
    ds, rs = DownstreamStats(), ReconstructionStats()
    evaluate_batch(
        model, tiny_sae, token_ids, 1, tiny_sae.n_latents, ds, rs, sae_dtype=torch.float32
    )
    r, rec = ds.result("trained"), rs.result()
    assert all(math.isfinite(x) for x in (r.ce_clean, r.ce_sae, r.ce_zero, r.kl_sae, r.kl_zero))
    assert rec.n_tokens == token_ids.numel() and math.isfinite(rec.fvu)


def test_evaluate_batch_feeds_reconstruction_stats(tiny_model, tiny_sae, token_ids) -> None:
    """The recon stats see block `layer`'s output (hookpoint numbering) at every position."""
    _, model = tiny_model
    layer = 2
    rs = ReconstructionStats()
    evaluate_batch(model, tiny_sae, token_ids, layer, tiny_sae.n_latents, DownstreamStats(), rs)
    seen = {}
    handle = get_blocks(model)[layer].register_forward_hook(
        lambda _m, _a, out: seen.setdefault("h", out[0] if isinstance(out, tuple) else out)
    )
    with torch.no_grad():
        model(input_ids=token_ids)
    handle.remove()
    x = seen["h"].reshape(-1, HIDDEN)
    v, i = tiny_sae.encode(x)
    ref = ReconstructionStats()
    ref.update(x, tiny_sae.decode(v, i), v, i, tiny_sae.n_latents)
    a, b = rs.result(), ref.result()
    assert a.n_tokens == b.n_tokens == token_ids.numel()
    for name in ("fvu", "cossim", "l0", "l1", "l2_ratio"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-6), name


@pytest.mark.parametrize("rows", [1, 3, 64])
def test_reduction_chunking_paths_agree(monkeypatch, rows: int) -> None:
    """The CE/KL reduction gives the same sums for any chunk size, the CPU's row-at-a-time
    path (rows=1) included, and either dot-product path (tiny GEMM diagonal for few rows,
    vecdot for many, as on an accelerator), with a shared or a per-sequence zero branch."""
    import randsae.metrics.downstream as ds_mod

    g = torch.Generator().manual_seed(7)
    b, t, v = 3, 11, 50
    clean = torch.randn(b, t, v, generator=g) * 3
    sae = clean + torch.randn(b, t, v, generator=g)
    zero = torch.randn(1, t, v, generator=g)
    ids = torch.randint(0, v, (b, t), generator=g)
    ref = DownstreamStats()
    ref.update(clean, sae, zero.expand(b, t, v).contiguous(), ids)  # per-sequence zero path
    monkeypatch.setattr(ds_mod, "_CPU_MAX_ROWS", rows)
    assert ds_mod._chunk_rows(clean.device, v) == rows  # rows == 1: the row path
    got = DownstreamStats()
    got.update(clean, sae, zero, ids)  # shared zero path
    got_per_seq = DownstreamStats()
    got_per_seq.update(clean, sae, zero.expand(b, t, v).contiguous(), ids)
    for name in ("n_tokens", "nll_clean", "nll_sae", "nll_zero", "kl_sae", "kl_zero"):
        assert getattr(got, name) == pytest.approx(getattr(ref, name), rel=1e-5), name
        assert getattr(got_per_seq, name) == pytest.approx(getattr(ref, name), rel=1e-5), name
    # And against the textbook formulas in fp64.
    lp_c = torch.log_softmax(clean[:, :-1].double(), -1)
    lp_s = torch.log_softmax(sae[:, :-1].double(), -1)
    tgt = ids[:, 1:].unsqueeze(-1)
    assert got.nll_sae == pytest.approx(-lp_s.gather(-1, tgt).sum().item(), rel=1e-5)
    kl = (lp_c.exp() * (lp_c - lp_s)).sum().item()
    assert got.kl_sae == pytest.approx(kl, rel=1e-5)


class RecordingStats(DownstreamStats):
    """A real accumulator that also keeps the logits of the last batch it was given."""

    def update(self, logits_clean, logits_sae, logits_zero, *args, **kwargs) -> None:  # type: ignore[override]
        self.seen = (logits_clean, logits_sae, logits_zero)
        super().update(logits_clean, logits_sae, logits_zero, *args, **kwargs)


@pytest.mark.parametrize("layer", [0, 1])
def test_skip_first_position_treats_position_0_alike_in_both_branches(
    tiny_model, tiny_sae, token_ids, layer
) -> None:
    """With skip_first_position the SAE and the zero branch both keep position 0's clean
    hidden state and its prediction is not counted: the zero branch's position-0 logits are
    the clean ones, and CE/KL equal hooked full forwards that replace positions 1.. only."""
    _, model = tiny_model
    ds, rs = RecordingStats(), ReconstructionStats()
    evaluate_batch(model, tiny_sae, token_ids, layer, tiny_sae.n_latents, ds, rs, skip_first_position=True,
                   zero_cache={})
    clean, logits_sae, logits_zero = ds.seen
    b, t = token_ids.shape
    logits_zero = logits_zero.expand_as(clean)
    torch.testing.assert_close(logits_zero[:, 0], clean[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits_sae[:, 0], clean[:, 0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits_zero[:, 1:], clean[:, 1:], atol=1e-2)  # still an ablation

    def keep_first(fill):
        return lambda h: torch.cat((h[:, :1], fill(h[:, 1:])), dim=1)

    def sae_fill(h):
        v, i = tiny_sae.encode(h.reshape(-1, h.shape[-1]))
        return tiny_sae.decode(v, i).reshape(h.shape)

    ref_clean = hooked_logits(model, token_ids, layer)
    ref_sae = hooked_logits(model, token_ids, layer, keep_first(sae_fill))
    ref_zero = hooked_logits(model, token_ids, layer, keep_first(torch.zeros_like))
    tgt = token_ids[:, 2:].reshape(-1)  # predictions from positions 1..T-2

    def ce(logits):
        return F.cross_entropy(logits[:, 1:-1].reshape(-1, logits.shape[-1]).double(), tgt).item()

    def kl(logits):
        lp_c = torch.log_softmax(ref_clean[:, 1:-1].double(), -1)
        lp_b = torch.log_softmax(logits[:, 1:-1].double(), -1)
        return (lp_c.exp() * (lp_c - lp_b)).sum(-1).mean().item()

    r = ds.result("trained")
    assert r.ce_n_tokens == b * (t - 2)
    assert r.ce_clean == pytest.approx(ce(ref_clean), rel=1e-5)
    assert r.ce_sae == pytest.approx(ce(ref_sae), rel=1e-5)
    assert r.ce_zero == pytest.approx(ce(ref_zero), rel=1e-5)
    assert r.kl_sae == pytest.approx(kl(ref_sae), rel=1e-4, abs=1e-6)
    assert r.kl_zero == pytest.approx(kl(ref_zero), rel=1e-4, abs=1e-6)
    # Zeroing position 0 as well (the old zero branch) gives a different CE_zero.
    all_zero = hooked_logits(model, token_ids, layer, torch.zeros_like)
    assert abs(ce(all_zero) - r.ce_zero) > 1e-3
    assert rs.result().n_tokens == b * (t - 1)  # reconstruction stats: position 0 left out too
    assert ds.seen[2].shape[0] == b  # zero branch per sequence: its input differs at position 0


def test_without_skip_both_branches_replace_position_0(tiny_model, tiny_sae, token_ids) -> None:
    _, model = tiny_model
    ds = RecordingStats()
    evaluate_batch(model, tiny_sae, token_ids, 1, tiny_sae.n_latents, ds)
    clean, logits_sae, logits_zero = ds.seen
    assert logits_zero.shape[0] == 1  # the shared single sequence
    assert not torch.allclose(logits_zero[0, 0], clean[0, 0], atol=1e-2)
    assert not torch.allclose(logits_sae[:, 0], clean[:, 0], atol=1e-3)


_STAT_FIELDS = ("n_tokens", "nll_clean", "nll_sae", "nll_zero", "kl_sae", "kl_zero")
_RECON_FIELDS = ("n_tokens", "sse", "cos_sum", "norm_in_sum", "norm_out_sum", "ratio_sum", "n_ratio",
                 "dot_sum", "sq_out_sum", "l0_sum", "l1_sum")


@pytest.mark.parametrize("skip_first", [False, True])
def test_group_of_saes_shares_the_prefix_and_equals_each_sae_alone(tiny_model, token_ids, skip_first) -> None:
    """Three SAEs in one pass: the prefix once, the clean and zero continuations once, one
    continuation per SAE; and each SAE's statistics are bit for bit those of evaluating it
    alone (over two batches, with the zero cache, as the stage runs it)."""
    _, model = tiny_model
    layer = 1
    saes = [TinyTopK(HIDDEN, n * HIDDEN, k=4, seed=s) for s, n in ((0, 4), (1, 4), (2, 2))]
    group = [SaeEval(sae, sae.n_latents, DownstreamStats(), ReconstructionStats()) for sae in saes]
    blocks = get_blocks(model)
    calls = {"prefix": 0, "last": 0}
    handles = [blocks[layer].register_forward_hook(lambda *_: calls.__setitem__("prefix", calls["prefix"] + 1)),
               blocks[-1].register_forward_hook(lambda *_: calls.__setitem__("last", calls["last"] + 1))]
    batches = (token_ids[:2], token_ids[2:])
    cache: dict = {}
    try:
        for ids in batches:
            evaluate_batch_group(model, group, ids, layer, skip_first_position=skip_first, zero_cache=cache)
    finally:
        for h in handles:
            h.remove()
    assert calls["prefix"] == 2  # once per batch, not once per SAE
    # per batch: clean + one per SAE, and the zero branch once per batch (skip_first) or once
    # per evaluation (shared zero sequence, cached)
    assert calls["last"] == 2 * (1 + len(saes)) + (2 if skip_first else 1)
    for one in group:
        alone_ds, alone_rs, alone_cache = DownstreamStats(), ReconstructionStats(), {}
        for ids in batches:
            evaluate_batch(model, one.sae, ids, layer, one.n_latents, alone_ds, alone_rs,
                           skip_first_position=skip_first, zero_cache=alone_cache)
        for name in _STAT_FIELDS:
            assert getattr(one.downstream, name) == getattr(alone_ds, name), name
        assert one.recon is not None
        for name in _RECON_FIELDS:
            assert getattr(one.recon, name) == getattr(alone_rs, name), name
        assert torch.equal(one.recon.firing_counts, alone_rs.firing_counts)
        assert torch.equal(one.recon.m2, alone_rs.m2)
    # the SAEs really differ, so equality above is per SAE, not one row copied
    assert len({one.downstream.nll_sae for one in group}) == len(saes)
    assert len({one.downstream.nll_clean for one in group}) == 1


def test_group_refuses_no_saes(tiny_model, token_ids) -> None:
    _, model = tiny_model
    with pytest.raises(ValueError, match="no SAEs"):
        evaluate_batch_group(model, [], token_ids, 1)
