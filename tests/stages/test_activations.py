"""Stage `activations`: what is stored equals a forward hook on the block module; several
layers in one pass; bf16 kept bit-exact; a killed build resumes to identical arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _helpers import tiny_config

from randsae import activation_cache, stages, zarr_io
from randsae.config import normalise
from randsae.models.arch import get_blocks
from randsae.plan import build_plan
from randsae.stages import build
from randsae.store import Store


def prepared(tmp_path, model_dir, **over):
    cfg = tiny_config(model_dir, tmp_path / "store", **over)
    cfg["models"]["tiny"]["layers"] = [0, 2]
    cfg["variants"] = ["trained", "control"]
    plan = build_plan(normalise(cfg))
    store = Store(tmp_path / "store")
    for a in plan.stage("model") + [plan.by_name["tokens/tiny/kjv/train"]]:
        build(a.spec(), store)
    return plan, store


def acts_specs(plan, variant):
    return [a.spec() for a in plan.stage("activations") if f"/{variant}/" in a.name]


def read(store, spec):
    return zarr_io.read_rows(zarr_io.open_array(store.path("activations", spec["key"]) / "acts.zarr"), 0, None)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("acts")
    plan, store = prepared(tmp, tiny_model_dir)
    for variant in ("trained", "control"):
        stages.build_group(acts_specs(plan, variant), store, {"batch_size": 4, "chunk_tokens": 500})
    return plan, store


def test_stored_rows_equal_a_forward_hook_on_the_block(built):
    plan, store = built
    from randsae.models.artifact import load_model_artifact

    specs = acts_specs(plan, "trained")
    loaded = load_model_artifact(store.path("model", specs[0]["inputs"]["model"].split("/")[1]))
    tokens = zarr_io.open_array(store.root / specs[0]["inputs"]["tokens"] / "tokens.zarr")[:]
    captured = {}
    blocks = get_blocks(loaded.model)
    hooks = [blocks[i].register_forward_hook(lambda m, a, o, i=i: captured.__setitem__(i, o[0] if isinstance(o, tuple) else o)) for i in (0, 2)]
    with torch.no_grad():
        loaded.model(input_ids=torch.from_numpy(tokens[:4]).long())
    for h in hooks:
        h.remove()
    for spec in specs:
        layer = spec["params"]["layer"]
        stored = read(store, spec)
        ctx = tokens.shape[1]
        assert stored.shape == (tokens.shape[0] * (ctx - 1), 32)
        assert stored.dtype == torch.bfloat16
        expected = captured[layer][:, 1:].reshape(-1, 32).to(torch.bfloat16)  # position 0 dropped
        assert torch.equal(stored[: expected.shape[0]], expected)
    arr = zarr_io.open_array(store.path("activations", specs[0]["key"]) / "acts.zarr")
    assert arr.attrs["logical_dtype"] == "bfloat16" and arr.dtype == np.uint16
    assert store.meta("activations", specs[0]["key"])["info"]["stored_bytes"] < arr.nbytes


def test_control_activations_differ_from_trained_but_reproduce(built, tmp_path, tiny_model_dir):
    plan, store = built
    trained = read(store, acts_specs(plan, "trained")[0])
    control = read(store, acts_specs(plan, "control")[0])
    assert not torch.equal(trained, control)
    # a rerun reproduces it, with another batch size too (batch size is not in the key)
    plan2, store2 = prepared(tmp_path, tiny_model_dir)
    stages.build_group(acts_specs(plan2, "control"), store2, {"batch_size": 3, "chunk_tokens": 500})
    assert torch.equal(read(store2, acts_specs(plan2, "control")[0]), control)


def test_killed_build_resumes_to_identical_arrays(built, tmp_path, tiny_model_dir, monkeypatch):
    plan, store = built
    plan2, store2 = prepared(tmp_path, tiny_model_dir)
    specs = acts_specs(plan2, "trained")
    real_write = zarr_io.write_rows
    calls = {"n": 0}

    def dying_write(arr, start, t):
        calls["n"] += 1
        if calls["n"] == 5:  # mid-run: after two complete chunks of two layers
            raise KeyboardInterrupt("killed")
        real_write(arr, start, t)

    monkeypatch.setattr(zarr_io, "write_rows", dying_write)
    with pytest.raises(KeyboardInterrupt):
        stages.build_group(specs, store2, {"batch_size": 4, "chunk_tokens": 500})
    assert not any(store2.exists("activations", s["key"]) for s in specs)
    monkeypatch.setattr(zarr_io, "write_rows", real_write)
    stages.build_group(specs, store2, {"batch_size": 4, "chunk_tokens": 500})
    for s in specs:
        assert torch.equal(read(store2, s), read(store, s))
    assert store2.verify() == []


def test_group_skips_layers_already_built(built, monkeypatch):
    plan, store = built
    called = []
    monkeypatch.setattr(activation_cache, "write_activations", lambda targets, *a, **k: called.append(targets))
    stages.build_group(acts_specs(plan, "trained"), store, {"batch_size": 4, "chunk_tokens": 500})
    assert called == []
