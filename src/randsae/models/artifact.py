"""The model artifact: one variant of one model, saved once and loaded by every later stage.

Layout of an artifact directory: what ``save_pretrained`` writes (config.json,
model.safetensors or its shards, generation_config.json), the tokenizer files, and
variant.json (variant, seed, step0 method, source, embedding tying, parameter count).
The control variant saves the trained weights; its noise hook is reinstalled on load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from randsae.models.sources import SourceSpec, describe_source, load_model, load_tokenizer
from randsae.models.variants import (
    apply_variant,
    check_variant,
    embedding_handling,
    embeddings_tied,
    install_control_hook,
    make_step0,
)

VARIANT_FILE = "variant.json"


@dataclass(frozen=True)
class LoadedModel:
    """A loaded artifact: the model (eval mode), its tokenizer and its variant.json."""

    model: PreTrainedModel
    tokenizer: Any
    info: dict[str, Any]


def build_model(
    source: SourceSpec,
    variant: str,
    seed: int,
    step0_revision: str | None = None,
    dtype: torch.dtype | str = "auto",
) -> tuple[PreTrainedModel, Any, dict[str, Any]]:
    """Load the source and make ``variant`` of it. The tokenizer always comes from the source
    itself (its trained revision), so every variant of a model sees the same tokens."""
    check_variant(variant)
    tokenizer = load_tokenizer(source)
    if variant == "step0":
        model, info = make_step0(source, seed, step0_revision, dtype)
    else:
        model = load_model(source, dtype)
        info = {"step0_method": None, "step0_revision": None, **apply_variant(model, variant, seed)}
    info = {"variant": variant, "seed": seed, "source": describe_source(source), **info}
    return model.eval(), tokenizer, {**info, **model_facts(model, variant)}


def model_facts(model: PreTrainedModel, variant: str) -> dict[str, Any]:
    """Facts about the built model that variant.json records."""
    return {
        "model_type": model.config.model_type,
        "tied_embeddings": embeddings_tied(model),
        "embedding_handling": embedding_handling(model, variant),
        "n_params": sum(p.numel() for p in model.parameters()),  # tied tensors counted once
        "dtype": str(model.dtype).removeprefix("torch."),
    }


def save_model_artifact(
    model: PreTrainedModel, tokenizer: Any, info: dict[str, Any], out_dir: str | Path
) -> Path:
    """Write the artifact into ``out_dir`` (created if needed). Atomic publication (temporary
    sibling, then rename) is the store's job, not this function's."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / VARIANT_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return out


def load_model_artifact(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> LoadedModel:
    """Load an artifact for inference; control artifacts get their noise hook back, seeded
    with the artifact's seed (seed each batch's rows with ``control_seed`` and ``control_row_seeds``)."""
    path = Path(path)
    info = json.loads((path / VARIANT_FILE).read_text())
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model = model.to(torch.device(device)).eval()  # type: ignore[arg-type]
    if info["variant"] == "control":
        install_control_hook(model, info["seed"])
    return LoadedModel(model, AutoTokenizer.from_pretrained(path), info)
