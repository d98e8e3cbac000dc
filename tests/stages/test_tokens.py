"""Stage `tokens` on a real tokenizer and the packaged corpus: Zarr output, disjoint splits,
reproducible, and growing train leaves eval untouched."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from _helpers import tiny_config

from randsae import zarr_io
from randsae.config import normalise
from randsae.plan import build_plan
from randsae.stages import build
from randsae.store import Store


def publish_model(store: Store, plan, model_dir) -> None:
    """Put the tiny model into the store as the trained-model artifact (its tokenizer is
    all the tokens stage reads)."""
    a = plan.by_name["model/tiny/trained"]
    with store.publish(a.spec()) as b:
        shutil.copytree(model_dir, b.workdir, dirs_exist_ok=True)


@pytest.fixture
def setup(tmp_path, tiny_model_dir):
    cfg = normalise(tiny_config(tiny_model_dir, tmp_path / "store"))
    plan = build_plan(cfg)
    store = Store(tmp_path / "store")
    publish_model(store, plan, tiny_model_dir)
    return cfg, plan, store


def read(store, a):
    d = store.path(a.stage, a.key)
    return zarr_io.open_array(d / "tokens.zarr")[:], zarr_io.open_array(d / "doc_start.zarr")[:]


def test_splits_are_disjoint_zarr_arrays(setup):
    cfg, plan, store = setup
    out = {}
    for split in ("eval", "interp", "train"):
        a = plan.by_name[f"tokens/tiny/kjv/{split}"]
        build(a.spec(), store)
        out[split] = read(store, a)
        meta = store.meta("tokens", a.key)
        size = cfg["corpus"]["splits"][split]
        assert out[split][0].shape == (size["tokens"] // size["ctx_len"], size["ctx_len"])
        assert out[split][0].dtype == np.int32
        assert meta["info"]["corpus_stats"]["docs_used"] > 0
    # documents never straddle splits: the sets of document-start windows differ entirely
    def doc_heads(tokens, starts, n=12):
        flat_t, flat_s = tokens.reshape(-1), starts.reshape(-1)
        return {tuple(flat_t[i : i + n]) for i in np.flatnonzero(flat_s) if i + n <= flat_t.size}
    heads = {s: doc_heads(*out[s]) for s in out}
    assert heads["eval"] and heads["train"]
    assert not heads["eval"] & heads["train"] and not heads["eval"] & heads["interp"] and not heads["interp"] & heads["train"]


def test_rebuild_is_bit_identical_and_train_growth_keeps_eval(setup, tmp_path, tiny_model_dir):
    cfg, plan, store = setup
    a = plan.by_name["tokens/tiny/kjv/eval"]
    build(a.spec(), store)
    first = read(store, a)
    # another store, a bigger train split: eval has the same key and the same bits
    cfg2 = tiny_config(tiny_model_dir, tmp_path / "store2")
    cfg2["corpus"]["splits"]["train"]["tokens"] = 16384
    plan2 = build_plan(normalise(cfg2))
    assert plan2.by_name["tokens/tiny/kjv/eval"].key == a.key
    assert plan2.by_name["tokens/tiny/kjv/train"].key != plan.by_name["tokens/tiny/kjv/train"].key
    store2 = Store(tmp_path / "store2")
    publish_model(store2, plan2, tiny_model_dir)
    build(plan2.by_name["tokens/tiny/kjv/eval"].spec(), store2)
    second = read(store2, plan2.by_name["tokens/tiny/kjv/eval"])
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])


def test_corpus_too_small_is_a_clear_error(tmp_path, tiny_model_dir):
    cfg = tiny_config(tiny_model_dir, tmp_path / "store")
    cfg["corpus"]["splits"]["eval"]["tokens"] = 10_000_000
    plan = build_plan(normalise(cfg))
    store = Store(tmp_path / "store")
    publish_model(store, plan, tiny_model_dir)
    from randsae.corpus import CorpusError

    with pytest.raises(CorpusError, match="ran out before split 'interp'"):
        build(plan.by_name["tokens/tiny/kjv/interp"].spec(), store)
    assert not store.exists("tokens", plan.by_name["tokens/tiny/kjv/interp"].key)
