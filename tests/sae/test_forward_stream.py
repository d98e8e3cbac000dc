"""ForwardStream: the batches of ActivationStream over the cached acts.zarr, computed from the
model's forward pass instead; one forward per window for every layer; exact resume of a
several-layer run (train_parts) after a kill."""

from __future__ import annotations

import pytest
import torch
from _helpers import tiny_config

from randsae import activation_cache
from randsae.config import normalise
from randsae.models.artifact import load_model_artifact
from randsae.plan import build_plan
from randsae.sae import ActivationStream, SaeConfig, TopKSAE, train_parts
from randsae.sae import checkpoint as ckpt
from randsae.sae.stream import ForwardWindows
from randsae.sae.trainer import TrainPart
from randsae.stages import build
from randsae.store import Store

LAYERS = (0, 2)
ORDER = {"batch_size": 96, "shuffle_buffer_tokens": 700, "shuffle_block_sequences": 3, "data_seed": 5}


class Killed(Exception):
    """Raised by the test hook to simulate the process dying mid-run."""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir):
    """The control variant and a train split of 48 sequences of 32 tokens, and their cached
    activations (bf16) at two layers, written by the activations stage's code."""
    tmp = tmp_path_factory.mktemp("fwd")
    cfg = normalise(tiny_config(tiny_model_dir, tmp / "store", **{
        "variants": ["control"], "corpus.splits.train": {"tokens": 48 * 32, "ctx_len": 32}}))
    plan = build_plan(cfg)
    store = Store(cfg["store"])
    model, tokens = plan.by_name["model/tiny/control"], plan.by_name["tokens/tiny/kjv/train"]
    for a in [*plan.stage("model"), tokens]:  # the trained model, then the control variant
        build(a.spec(), store)
    targets = [activation_cache.LayerTarget(layer, tmp / f"L{layer}", "bfloat16") for layer in LAYERS]
    for t in targets:
        t.workdir.mkdir()
    activation_cache.write_activations(targets, store.path("model", model.key), store.path("tokens", tokens.key),
                                       "float32", True, 5, 310, torch.device("cpu"))
    return store.path("model", model.key), store.path("tokens", tokens.key), {t.layer: t.workdir / "acts.zarr" for t in targets}


def windows_of(inputs, **kw) -> ForwardWindows:
    model_dir, tokens_dir, _ = inputs
    loaded = load_model_artifact(model_dir, dtype=torch.float32, device="cpu")
    return ForwardWindows(loaded, tokens_dir, LAYERS, dtype="bfloat16", drop_first_position=True,
                          forward_batch_size=kw.get("forward_batch_size", 4), device="cpu")


def test_forward_batches_equal_the_cached_batches_with_one_forward_per_window(inputs):
    _, _, acts = inputs
    windows = windows_of(inputs)
    fwd = {layer: windows.stream(layer, **ORDER, max_tokens=96 * 40) for layer in LAYERS}  # 2+ passes
    cached = {layer: ActivationStream(acts[layer], **ORDER, max_tokens=96 * 40) for layer in LAYERS}
    n = 0
    while True:  # the layers take turns, as in the trainer
        got = {layer: (fwd[layer].next_batch(), cached[layer].next_batch()) for layer in LAYERS}
        if got[0][0] is None:
            assert all(a is None and b is None for a, b in got.values())
            break
        for a, b in got.values():
            assert a.dtype == b.dtype == torch.bfloat16 and torch.equal(a, b)
        n += 1
    assert n == 40
    for layer in LAYERS:
        assert fwd[layer].state_dict() == cached[layer].state_dict()  # one cursor, either source
        cached[layer].close()
    # 40 batches of 96 rows = 3840 rows over passes of 48 x 31 = 1488 rows in windows of 7
    # blocks of 3 sequences (651 rows): two whole passes and two windows of a third; each
    # window's sequences run once for both layers together
    assert windows.forward_sequences == 2 * 48 + 2 * 21


def test_a_killed_several_layer_streamed_run_resumes_to_the_same_bytes(inputs, tmp_path):
    cfgs = {0: [SaeConfig(expansion_factor=2, k=4, seed=s, warmup_steps=2, checkpoint_every_steps=4,
                          log_every_steps=3, max_tokens=96 * 20, **ORDER) for s in (0, 1)],
            2: [SaeConfig(expansion_factor=4, k=2, seed=0, warmup_steps=2, checkpoint_every_steps=4,
                          log_every_steps=3, max_tokens=96 * 20, **ORDER)]}

    def run(out, ck, die_at=None, forward_batch_size=4):
        windows = windows_of(inputs, forward_batch_size=forward_batch_size)
        parts = [TrainPart(windows.stream(layer, **ORDER, max_tokens=96 * 20),
                           [out / f"L{layer}s{i}" for i in range(len(cs))], cs) for layer, cs in cfgs.items()]

        def hook(step):
            if step == die_at:
                raise Killed(step)

        return train_parts(parts, ck, device="cpu", progress=False, on_step=hook)

    ref = run(tmp_path / "ref", tmp_path / "ck_ref")
    assert [len(r) for r in ref] == [2, 1] and ref[0][0].steps == 20
    for die_at in (6, 11):
        with pytest.raises(Killed):
            run(tmp_path / "run", tmp_path / "ck", die_at, forward_batch_size=7)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "ck")] == [4, 8]
    res = run(tmp_path / "run", tmp_path / "ck")
    assert res[1][0].resumed_from_step == 8
    for name in ("L0s0", "L0s1", "L2s0"):
        a, b = TopKSAE.load(tmp_path / "ref" / name), TopKSAE.load(tmp_path / "run" / name)
        for pname, p in a.named_parameters():
            assert torch.equal(p, getattr(b, pname)), f"{name}: {pname} differs"
        assert (tmp_path / "ref" / name / "train_log.parquet").read_bytes() == \
            (tmp_path / "run" / name / "train_log.parquet").read_bytes()
