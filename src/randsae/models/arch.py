"""Where the hookpoints are in a HuggingFace causal LM.

The hookpoint for "layer i" is the residual stream after transformer block i: the first
element of the output of the i-th block module (``model.gpt_neox.layers[i]`` for GPT-NeoX /
Pythia, ``model.model.layers[i]`` for Llama / SmolLM2, ``model.transformer.h[i]`` for GPT-2).
Layers are numbered from 0; layer ``n_layers - 1`` is the last block's output, before the
final norm.
"""

from __future__ import annotations

import torch
from torch import nn

_BLOCK_PATHS = ("gpt_neox.layers", "model.layers", "transformer.h", "model.decoder.layers")
_EMBED_PATHS = ("gpt_neox.embed_in", "model.embed_tokens", "transformer.wte", "model.decoder.embed_tokens")


def _get(model: nn.Module, dotted: str) -> nn.Module | None:
    obj: object = model
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return None
        obj = getattr(obj, part)
    return obj if isinstance(obj, nn.Module) else None


def get_blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks, in order."""
    for path in _BLOCK_PATHS:
        mod = _get(model, path)
        if isinstance(mod, nn.ModuleList):
            return mod
    raise ValueError(
        f"cannot find the transformer blocks of {type(model).__name__}; "
        f"looked for {', '.join(_BLOCK_PATHS)}"
    )


def get_input_embedding(model: nn.Module) -> nn.Embedding:
    emb = model.get_input_embeddings()  # type: ignore[operator]
    assert isinstance(emb, nn.Embedding)
    return emb


def n_layers(model: nn.Module) -> int:
    return len(get_blocks(model))


def block_output(out: object) -> torch.Tensor:
    """The hidden state in a block's output (blocks return a tensor or a tuple)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"unexpected block output type {type(out).__name__}")
