"""Residual-stream activations: the output of transformer block i, for several layers in
one forward pass that stops after the deepest requested block.

Hookpoint: the hidden state a block module returns (``model.gpt_neox.layers[i]``,
``model.model.layers[i]``, ...; see :mod:`randsae.models.arch`). Layers count from 0.
The pass stops by raising :class:`StopForward` from the deepest block's hook, so no later
block, final norm or LM head runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from randsae.models.arch import block_output, get_blocks


class StopForward(Exception):
    """Raised inside the forward pass once every requested layer has been captured."""


@contextlib.contextmanager
def capture_layers(model: nn.Module, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Forward hooks that store block outputs into the yielded dict (and stop the pass after
    the deepest layer). Use with :func:`run_to_layers`."""
    blocks = get_blocks(model)
    bad = [layer for layer in layers if not 0 <= layer < len(blocks)]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has {len(blocks)} blocks (0..{len(blocks) - 1})")
    last = max(layers)
    captured: dict[int, torch.Tensor] = {}
    handles = []

    def make_hook(layer: int):
        def hook(module: nn.Module, args: object, output: object) -> None:
            captured[layer] = block_output(output).detach()
            if layer == last:
                raise StopForward

        return hook

    for layer in set(layers):
        handles.append(blocks[layer].register_forward_hook(make_hook(layer)))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def run_to_layers(model: nn.Module, input_ids: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """{layer: hidden state [batch, seq, d_model]} for the requested layers, in one pass."""
    with capture_layers(model, layers) as captured, contextlib.suppress(StopForward):
        model(input_ids=input_ids, use_cache=False)
    missing = set(layers) - set(captured)
    if missing:
        raise RuntimeError(f"the forward pass never reached layers {sorted(missing)}")
    return captured
