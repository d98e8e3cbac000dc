"""Stage `latents` (and `examples` after it) on a tiny model: the cache equals a dense
recomputation (forward hook at the SAE's layer + SAE encode), the latent-major index returns
exactly the dense nonzeros of each latent (also when sorted in many small buckets), a killed
build resumes to identical arrays, and the examples stage reads the result."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from _helpers import tiny_config

from randsae import latents as lat_mod
from randsae import stages, zarr_io
from randsae.config import normalise
from randsae.examples import EXAMPLES_FILE, TABLE_FILE, load_examples
from randsae.forward import run_to_layers
from randsae.latents import (
    INDEX_ROWS,
    INDEX_VALUES,
    INDICES,
    OFFSETS,
    VALUES,
    HookpointError,
    LatentCache,
    build_index,
    resolve_hookpoint,
)
from randsae.plan import build_plan
from randsae.sae import SaeConfig, TopKSAE
from randsae.stages import build
from randsae.store import Store

BATCH, CHUNK = 4, 320  # 10 sequences of 32 tokens per chunk: several chunks


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("latents")
    cfg = tiny_config(tiny_model_dir, tmp / "store")
    cfg["variants"] = ["trained"]
    plan = build_plan(normalise(cfg))
    store = Store(tmp / "store")
    for a in plan.stage("model") + [plan.by_name["tokens/tiny/kjv/train"], plan.by_name["tokens/tiny/kjv/interp"]]:
        build(a.spec(), store)
    stages.build_group([a.spec() for a in plan.stage("activations")], store, {"batch_size": 4, "chunk_tokens": 2048})
    sae_spec = plan.stage("sae")[0].spec()
    with store.publish(sae_spec) as b:  # stands in for the sae stage: random weights
        sae = TopKSAE.initialised(32, 64, 4, seed=3)
        sae.config = SaeConfig(expansion_factor=2, k=4)
        sae.save(b.workdir)
    lat_path = build(plan.stage("latents")[0].spec(), store, {"batch_size": BATCH, "chunk_tokens": CHUNK})
    ex_path = build(plan.stage("examples")[0].spec(), store)
    return plan, store, lat_path, ex_path


def dense_reference(store, plan):
    """Every interp token's SAE activations, recomputed densely in the stage's batches."""
    from randsae.models.artifact import load_model_artifact

    spec = plan.stage("latents")[0].spec()
    model = load_model_artifact(store.root / spec["inputs"]["model"]).model
    sae = TopKSAE.load(store.root / spec["inputs"]["sae"])
    tokens = np.asarray(zarr_io.open_array(store.root / spec["inputs"]["tokens"] / "tokens.zarr")[:])
    out = []
    for b0 in range(0, tokens.shape[0], BATCH):
        hidden = run_to_layers(model, torch.from_numpy(tokens[b0 : b0 + BATCH]).long(), [1])[1]
        x = hidden.reshape(-1, 32).to(torch.bfloat16).float()  # the SAE's training data was bf16
        with torch.no_grad():
            vals, idx = sae.encode(x)
        d = torch.zeros(x.shape[0], sae.n_latents).scatter_(1, idx, vals.to(torch.float16).float())
        out.append(d.numpy())
    return np.concatenate(out)


def test_meta_records_layer_and_position_rule(built):
    plan, store, path, _ = built
    info = store.meta("latents", plan.stage("latents")[0].key)["info"]
    assert info["layer"] == 1 and info["first_eligible_position"] == 1 and info["acts_dtype"] == "bfloat16"
    assert info["layer_source"].startswith("activations input")
    assert info["n_rows"] == 2048 and info["k"] == 4 and info["n_latents"] == 64
    assert not (path / "progress.json").exists() and not (path / "index.spill").exists()
    assert store.verify() == []


def test_cache_round_trips_against_dense_recomputation(built):
    plan, store, path, _ = built
    cache = LatentCache(path)
    ref = dense_reference(store, plan)
    got = cache.dense(0, cache.n_rows, eligible_only=False)
    assert got.shape == ref.shape == (2048, 64)
    assert np.array_equal(got, ref)
    idx = np.asarray(zarr_io.open_array(path / INDICES)[:])
    vals = np.asarray(zarr_io.open_array(path / VALUES)[:])
    assert idx.dtype == np.int32 and vals.dtype == np.float16
    assert (np.diff(vals.astype(np.float32), axis=1) <= 0).all()  # sorted descending per row
    assert ((idx == -1) == (vals == 0)).all()


def test_index_returns_exactly_the_dense_nonzeros_per_latent(built):
    _, _, path, _ = built
    cache = LatentCache(path)
    dense = cache.dense(0, cache.n_rows)  # eligible positions only
    assert not dense[:: cache.ctx_len].any()  # position 0 is never an activation
    for latent in range(cache.n_latents):
        rows, vals = cache.latent(latent)
        want = np.flatnonzero(dense[:, latent])
        assert np.array_equal(rows, want), latent
        assert np.array_equal(vals, dense[want, latent]), latent
    assert np.array_equal(cache.stats.fire_counts, (dense > 0).sum(0))
    assert np.array_equal(cache.stats.max_activation, dense.max(0))
    assert np.allclose(cache.stats.sum_activation, dense.astype(np.float64).sum(0))


def test_index_in_small_buckets_is_identical(built, tmp_path):
    _, _, path, _ = built
    cache = LatentCache(path)
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    shutil.rmtree(copy / "index")
    n = build_index(copy, cache.stats.fire_counts, cache.ctx_len, 1, budget=100)  # ~80 buckets
    assert n == int(cache.offsets[-1])
    assert np.array_equal(np.load(copy / OFFSETS), cache.offsets)
    for name in (INDEX_ROWS, INDEX_VALUES):
        assert np.array_equal(zarr_io.open_array(copy / name)[:], zarr_io.open_array(path / name)[:])


def test_killed_build_resumes_to_identical_arrays(built, tmp_path, monkeypatch):
    plan, store, path, _ = built
    spec = plan.stage("latents")[0].spec()
    args = [store.root / spec["inputs"][r] for r in ("model", "sae", "tokens")]
    hook = resolve_hookpoint(args[1], store.root)
    settings = lat_mod.CacheSettings(batch_size=BATCH, chunk_tokens=CHUNK)
    real, calls = lat_mod.encode_hidden, {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 8:  # inside the third chunk
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(lat_mod, "encode_hidden", dying)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(KeyboardInterrupt):
        lat_mod.build_latent_cache(work, *args, hook, "float32", settings)
    assert json.loads((work / "progress.json").read_text())["chunks_done"] == 2
    monkeypatch.setattr(lat_mod, "encode_hidden", real)
    calls["n"] = 0
    lat_mod.build_latent_cache(work, *args, hook, "float32", settings)
    for name in (INDICES, VALUES, INDEX_ROWS, INDEX_VALUES):
        assert np.array_equal(zarr_io.open_array(work / name)[:], zarr_io.open_array(path / name)[:]), name
    assert np.array_equal(np.load(work / OFFSETS), np.load(path / OFFSETS))


def test_hookpoint_resolution_order_and_error(tmp_path):
    sae_dir, store_root = tmp_path / "store" / "sae" / "k1", tmp_path / "store"
    acts = store_root / "activations" / "a1"
    acts.mkdir(parents=True)
    sae_dir.mkdir(parents=True)
    (acts / "meta.json").write_text(json.dumps({"params": {"layer": 4, "drop_first_position": False, "dtype": "float16"}}))
    meta = {"inputs": {"activations": "activations/a1"}}
    (sae_dir / "meta.json").write_text(json.dumps(meta))
    h = resolve_hookpoint(sae_dir, store_root)
    assert (h.layer, h.first_eligible_position, h.acts_dtype) == (4, 0, "float16")
    (sae_dir / "meta.json").write_text(json.dumps({**meta, "info": {"layer": 2}}))
    assert resolve_hookpoint(sae_dir, store_root).layer == 2  # the SAE's own record wins
    shutil.rmtree(acts)
    (sae_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(HookpointError, match="cannot tell which layer"):
        resolve_hookpoint(sae_dir, store_root)


def test_examples_stage_reads_the_cache(built):
    plan, store, _, ex_path = built
    bundles = load_examples(ex_path / EXAMPLES_FILE)
    info = store.meta("examples", plan.stage("examples")[0].key)["info"]
    assert info["n_sampled"] == len(bundles) == 2  # tiny config: n_latents 2
    table = pq.read_table(ex_path / TABLE_FILE)
    assert table.num_rows == 64 and sum(table.column("sampled").to_pylist()) == 2
    for b in bundles:
        assert len(b.explainer) == 4 and len(b.test) == 4 and len(b.non_activating) == 2
        text = "".join(b.explainer[0].tokens)
        assert text and len(b.explainer[0].tokens) == len(b.explainer[0].token_ids) <= 32


def test_one_job_for_several_saes_gives_each_its_solo_cache(tmp_path, tiny_model_dir):
    """The latents group (one model variant: two layers x two seeds) shares one forward pass;
    each cache is byte for byte the cache of a job building that SAE alone, also when the
    group resumes with its members at different chunks."""
    cfg = tiny_config(tiny_model_dir, tmp_path / "store", **{"models.tiny.layers": [0, 1], "sae.seeds": [0, 1]})
    cfg["variants"] = ["trained"]
    plan = build_plan(normalise(cfg))
    store = Store(tmp_path / "store")
    for a in plan.stage("model") + [plan.by_name["tokens/tiny/kjv/interp"]]:
        build(a.spec(), store)
    saes = plan.stage("sae")
    for i, a in enumerate(saes):  # stand in for the sae stage: random weights, one seed each
        with store.publish(a.spec()) as b:
            sae = TopKSAE.initialised(32, 64, 4, seed=10 + i)
            sae.config = SaeConfig(expansion_factor=2, k=4)
            sae.save(b.workdir)
    specs = [a.spec() for a in plan.stage("latents")]
    assert len(specs) == 4 and len({stages.stage_def("latents").group(a) for a in plan.stage("latents")}) == 1
    settings = lat_mod.CacheSettings(batch_size=BATCH, chunk_tokens=CHUNK)
    solo = {}
    for spec in specs:
        args = [store.root / spec["inputs"][r] for r in ("model", "sae", "tokens")]
        work = tmp_path / "solo" / spec["key"]
        work.mkdir(parents=True)
        lat_mod.build_latent_cache(work, *args, resolve_hookpoint(args[1], store.root), "float32", settings)
        solo[spec["key"]] = work
    # a member that an earlier attempt left two chunks in: the group resumes it where it was
    first = specs[0]
    early = tmp_path / "early"
    args = [store.root / first["inputs"][r] for r in ("model", "sae", "tokens")]
    real, calls = lat_mod.encode_hidden, {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    early.mkdir()
    lat_mod.encode_hidden = dying
    try:
        with pytest.raises(KeyboardInterrupt):
            lat_mod.build_latent_cache(early, *args, resolve_hookpoint(args[1], store.root), "float32", settings)
    finally:
        lat_mod.encode_hidden = real
    targets = [lat_mod.CacheTarget(early if s is first else tmp_path / "group" / s["key"], store.root / s["inputs"]["sae"],
                                   resolve_hookpoint(store.root / s["inputs"]["sae"], store.root), s["name"])
               for s in specs]
    for t in targets[1:]:
        t.workdir.mkdir(parents=True)
    infos = lat_mod.build_latent_caches(targets, args[0], args[2], "float32", settings)
    assert [i["saes_in_job"] for i in infos] == [4] * 4
    assert {i["layer"] for i in infos} == {0, 1}
    for spec, t in zip(specs, targets):
        for name in (INDICES, VALUES, INDEX_ROWS, INDEX_VALUES):
            assert np.array_equal(zarr_io.open_array(t.workdir / name)[:],
                                  zarr_io.open_array(solo[spec["key"]] / name)[:]), (spec["name"], name)
        assert np.array_equal(np.load(t.workdir / OFFSETS), np.load(solo[spec["key"]] / OFFSETS))
    # and through the stage: one group job publishes all four
    stages.build_group(specs, store, {"batch_size": BATCH, "chunk_tokens": CHUNK})
    for spec in specs:
        path = store.path("latents", spec["key"])
        assert np.array_equal(zarr_io.open_array(path / INDICES)[:], zarr_io.open_array(solo[spec["key"]] / INDICES)[:])
        assert json.loads((path / "meta.json").read_text())["info"]["saes_in_job"] == 4
