"""The model artifact: build -> save -> load round trips for every variant."""

from __future__ import annotations

import json

import pytest
import torch

from randsae.models.artifact import (
    VARIANT_FILE,
    build_model,
    load_model_artifact,
    save_model_artifact,
)
from randsae.models.variants import VARIANTS, control_state, embeddings_tied

IDS = torch.tensor([[3, 4, 5, 6, 7, 8]])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("variant", VARIANTS)
def test_round_trip_keeps_weights_tying_and_info(variant, llama_dir, tmp_path):
    source = {"kind": "local", "path": str(llama_dir)}
    model, tokenizer, info = build_model(source, variant, seed=2)
    out = save_model_artifact(model, tokenizer, info, tmp_path / variant)
    loaded = load_model_artifact(out)

    recorded = json.loads((out / VARIANT_FILE).read_text())
    assert recorded == loaded.info and recorded["variant"] == variant and recorded["seed"] == 2
    assert recorded["source"] == source and recorded["tied_embeddings"] is True
    assert recorded["n_params"] == sum(p.numel() for p in model.parameters())
    assert recorded["step0_method"] == ("init" if variant == "step0" else None)
    assert "tied" in recorded["embedding_handling"]
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()

    assert not loaded.model.training and embeddings_tied(loaded.model)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), loaded.model.parameters()))
    assert loaded.tokenizer("the cat sat").input_ids == tokenizer("the cat sat").input_ids
    assert (control_state(loaded.model) is not None) == (variant == "control")
    if variant != "control":
        assert torch.equal(_logits(model), _logits(loaded.model))


def test_loaded_control_artifact_is_seeded_from_its_seed(llama_dir, tmp_path):
    model, tokenizer, info = build_model({"kind": "local", "path": str(llama_dir)}, "control", 9)
    out = save_model_artifact(model, tokenizer, info, tmp_path / "control")
    a, b = load_model_artifact(out).model, load_model_artifact(out).model
    first = _logits(a)
    assert torch.equal(first, _logits(b))  # same artifact seed, fresh load -> same noise
    assert not torch.equal(first, _logits(a))  # the stream advances between passes


def test_load_casts_to_the_requested_dtype(neox_dir, tmp_path):
    model, tokenizer, info = build_model(
        {"kind": "local", "path": str(neox_dir)}, "rerandomized", 0
    )
    out = save_model_artifact(model, tokenizer, info, tmp_path / "rr")
    loaded = load_model_artifact(out, dtype=torch.bfloat16)
    assert loaded.model.dtype == torch.bfloat16
    assert info["tied_embeddings"] is False and info["embedding_handling"].startswith("untied")
    assert info["rerandomization"]["n_tensors_redrawn"] == len(list(model.parameters()))


def test_step0_revision_artifact_records_the_method(neox_dir, tmp_path):
    source = {"kind": "local", "path": str(neox_dir)}
    model, tokenizer, info = build_model(source, "step0", 0, step0_revision="step0")
    loaded = load_model_artifact(save_model_artifact(model, tokenizer, info, tmp_path / "s0"))
    assert loaded.info["step0_method"] == "revision" and loaded.info["step0_revision"] == "step0"
    assert loaded.info["source"] == source  # the trained source; the revision is recorded apart
