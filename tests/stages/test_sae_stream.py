"""Stage `sae` streamed from the forward pass vs trained on cached activations: the same keys,
the same bytes (a multi-layer, multi-seed, multi-k group of the control variant, whose input
noise is seeded per sequence), one job per group, and a streamed store with no activations."""

from __future__ import annotations

import hashlib

import pytest
from _helpers import tiny_config

from randsae.config import normalise
from randsae.plan import build_plan, execution_settings
from randsae.stages import build, build_group
from randsae.stages.sae import cached_activations, extra_inputs
from randsae.store import Store

SAE_FILES = ("sae.safetensors", "cfg.json", "train_log.parquet")


def stream_config(model_dir, store, cache: str) -> dict:
    return normalise(tiny_config(model_dir, store, **{
        "variants": ["control"],
        "models.tiny.layers": [0, 2],
        "sae.seeds": [0, 1],
        "sae.k": [4, 8],
        # several blocks per window, several windows per pass, and a second (reshuffled) pass
        "sae.shuffle_block_sequences": 4,
        "sae.shuffle_buffer_tokens": 1024,
        "sae.batch_size": 128,
        "corpus.splits.train.tokens": 4096,  # 64 sequences: 4032 rows, 31 batches a pass
        "sae.max_tokens": 40 * 128,
        "execution.activations.cache": cache,
        "execution.activations.chunk_tokens": 500,  # chunks that are no multiple of a block
        "execution.sae.forward_batch_size": 3,  # forward batches unlike the activations stage's
        "execution.sae.checkpoint_every_steps": 20,
    }))


def build_store(tmp, model_dir, cache: str, one_job: bool = True):
    cfg = stream_config(model_dir, tmp / "store", cache)
    plan = build_plan(cfg)
    store = Store(cfg["store"])
    for a in plan.stage("model") + [plan.by_name["tokens/tiny/kjv/train"]]:
        build(a.spec(), store, execution_settings(cfg, a.stage))
    if plan.stage("activations"):
        build_group([a.spec() for a in plan.stage("activations")], store, execution_settings(cfg, "activations"))
    saes = plan.stage("sae")
    if one_job:
        build_group([a.spec() for a in saes], store, execution_settings(cfg, "sae"))
    return cfg, plan, store


def digest(store, key, name) -> str:
    return hashlib.sha256((store.path("sae", key) / name).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def stores(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("stream")
    return {cache: build_store(tmp / cache, tiny_model_dir, cache) for cache in ("always", "never")}


def test_streamed_and_cached_saes_have_the_same_keys_and_bytes(stores):
    (_, cached_plan, cached), (_, streamed_plan, streamed) = stores["always"], stores["never"]
    keys = sorted(a.key for a in cached_plan.stage("sae"))
    assert len(keys) == 2 * 2 * 2  # layers x seeds x k
    assert keys == sorted(a.key for a in streamed_plan.stage("sae"))
    for a in cached_plan.stage("sae"):
        for name in SAE_FILES:
            assert digest(cached, a.key, name) == digest(streamed, a.key, name), f"{a.name}: {name}"
        assert cached.meta("sae", a.key)["info"]["activations_source"] == "cached"
        assert streamed.meta("sae", a.key)["info"]["activations_source"] == "streamed"
    # the SAEs differ from each other: the comparison above compares something
    assert len({digest(cached, a.key, "sae.safetensors") for a in cached_plan.stage("sae")}) == len(keys)


def test_a_streamed_store_holds_no_train_activations(stores):
    _, plan, store = stores["never"]
    assert plan.stage("activations") == []
    assert not (store.root / "activations").exists() and not list(store.iter_meta("activations"))
    assert all(cached_activations(a, plan) is None and extra_inputs(a, plan) == [] for a in plan.stage("sae"))
    # nothing is left behind either: no partial work, no checkpoints
    assert not list((store.root / ".partial").rglob("step-*.pt"))


def test_the_cached_plan_names_each_saes_activations_as_its_extra_input(stores):
    _, plan, _ = stores["always"]
    for a in plan.stage("sae"):
        (acts,) = extra_inputs(a, plan)
        assert acts.stage == "activations" and acts.labels["layer"] == a.labels["layer"]
        assert acts.inputs == {"model": a.inputs["model"], "tokens": a.inputs["tokens"]}


def test_an_sae_built_alone_equals_the_same_sae_built_in_its_group(stores, tmp_path, tiny_model_dir):
    _, plan, grouped = stores["never"]
    cfg, plan_alone, alone = build_store(tmp_path, tiny_model_dir, "never", one_job=False)
    sae = plan_alone.by_name["sae/tiny/control/L2/x2-k8/s1"]
    build(sae.spec(), alone, execution_settings(cfg, "sae"))
    assert [m["key"] for m in alone.iter_meta("sae")] == [sae.key]
    for name in SAE_FILES:
        assert digest(alone, sae.key, name) == digest(grouped, sae.key, name), name


def test_auto_caches_what_fits_the_budget_and_streams_the_rest(tiny_model_dir, tmp_path):
    fits = build_plan(stream_config(tiny_model_dir, tmp_path / "s", "auto"))
    assert len(fits.stage("activations")) == 2  # 4032 rows x 32 x 2 bytes x 2 layers: tiny
    over = normalise(tiny_config(tiny_model_dir, tmp_path / "s", **{"execution.activations.cache_budget_gb": 1e-6}))
    small = build_plan(over)
    assert small.stage("activations") == [] and small.keys() - build_plan(normalise(tiny_config(
        tiny_model_dir, tmp_path / "s"))).keys() == set()  # no other key moved
