"""Keys are exact: an execution setting changes no key and no SAE byte.

Two stores built from configs that differ only in ``execution.activations.chunk_tokens`` hold
activation arrays with different Zarr chunkings; the SAEs trained on them have the same keys and
byte-identical files (before the data order was defined by ``sae.shuffle_block_sequences``, the
chunk length was the shuffle block and these SAEs differed)."""

from __future__ import annotations

import hashlib

from _helpers import tiny_config

from randsae import zarr_io
from randsae.config import normalise
from randsae.plan import build_plan, execution_settings
from randsae.stages import build, build_group
from randsae.store import Store

SAE_FILES = ("sae.safetensors", "cfg.json", "train_log.parquet")


def _build_saes(tmp, model_dir, chunk_tokens: int):
    cfg = normalise(tiny_config(model_dir, tmp / "store", **{
        "variants": ["trained"],
        "execution.activations.chunk_tokens": chunk_tokens,
        # several blocks per window and several windows per pass, so the order is really shuffled
        "sae.shuffle_block_sequences": 4,
        "sae.shuffle_buffer_tokens": 1024,
        "sae.batch_size": 128,
    }))
    plan = build_plan(cfg)
    store = Store(cfg["store"])
    for a in plan.stage("model") + [plan.by_name["tokens/tiny/kjv/train"]]:
        build(a.spec(), store, execution_settings(cfg, a.stage))
    build_group([a.spec() for a in plan.stage("activations")], store, execution_settings(cfg, "activations"))
    for a in plan.stage("sae"):
        build(a.spec(), store, execution_settings(cfg, "sae"))
    return plan, store


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_chunk_tokens_changes_no_key_and_no_sae_byte(tmp_path, tiny_model_dir):
    plan_a, store_a = _build_saes(tmp_path / "a", tiny_model_dir, chunk_tokens=256)
    plan_b, store_b = _build_saes(tmp_path / "b", tiny_model_dir, chunk_tokens=768)
    assert {a.name: a.key for a in plan_a} == {a.name: a.key for a in plan_b}
    acts = plan_a.stage("activations")[0]
    chunks = [zarr_io.open_array(s.path("activations", acts.key) / "acts.zarr").chunks[0] for s in (store_a, store_b)]
    assert chunks[0] != chunks[1], "the setting did not reach the activations stage"
    saes = plan_a.stage("sae")
    assert saes
    for sae in saes:
        for name in SAE_FILES:
            a, b = (s.path("sae", sae.key) / name for s in (store_a, store_b))
            assert _digest(a) == _digest(b), f"{sae.name}: {name} differs between chunkings"
