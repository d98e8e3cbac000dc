"""Run "the rest of the model" from a replaced hookpoint, computing the prefix only once.

Problem: the CE/KL metrics need the model's logits three times for the same tokens, with the
output of block ``layer`` being (a) the clean hidden state, (b) the SAE reconstruction, (c) zeros.
Running the whole model three times with a replacing hook is correct but pays for the prefix
(embedding + blocks 0..layer) three times. Calling blocks ``layer+1..`` by hand is fast but has to
rebuild each architecture's attention mask, position ids and rotary embeddings, which differ
between architectures and transformers versions.

Approach here: the model's own forward always runs, so mask, position ids, rotary embeddings,
final norm and LM head are exactly what the model does. For the clean branch it runs normally,
and a forward hook on block ``layer`` captures the hidden state (the prefix, computed once). For
each spliced branch it runs again with ``inputs_embeds`` (so the input embedding module is not
called: it is not needed, and a hook on it that draws noise would otherwise fire again) while
blocks ``0..layer`` have their ``forward`` temporarily replaced by a function that returns the
branch's hidden state in the block's own output structure (tensor or tuple). Those blocks
therefore cost nothing, and the blocks after ``layer`` see exactly the input they would see
under a replacing hook on block ``layer`` in a full forward.

Hooks registered on the bypassed blocks are suspended during the branch runs, so any hook on
blocks ``0..layer`` sees exactly one call per batch (the prefix), as if the prefix really was
computed once and cached. Hooks on later blocks, the final norm and the head fire per branch.

Control variant: its fresh input noise comes from a hook on the input embedding. Because the
embedding runs only in the prefix, all three branches continue from the same noisy hidden state
(the noise is drawn once per batch, not once per branch; its seeds, one per sequence, come from
the caller's loop, :func:`randsae.forward.token_batches`) -- which is what "same tokens, three
ways of filling the hookpoint" requires.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from randsae.models.arch import block_output, get_blocks

_SENTINEL = object()


@dataclass
class Prefix:
    """What the clean forward leaves behind for the spliced branches."""

    hidden: torch.Tensor  # output of block `layer`, [B, T, d]
    logits: torch.Tensor  # clean logits, [B, T, V]
    restructure: Callable[[torch.Tensor], object]  # hidden -> block output in the block's own form
    layer: int
    attention_mask: torch.Tensor | None


def _restructurer(out: object) -> Callable[[torch.Tensor], object]:
    """A function that packs a hidden state the way this block returned its output."""
    if isinstance(out, torch.Tensor):
        return lambda h: h
    if isinstance(out, tuple):
        rest = out[1:]
        return lambda h: (h, *rest)
    if isinstance(out, list):
        rest_l = list(out[1:])
        return lambda h: [h, *rest_l]
    raise TypeError(f"unexpected block output type {type(out).__name__}")


def _check_layer(model: nn.Module, layer: int) -> nn.ModuleList:
    blocks = get_blocks(model)
    if not 0 <= layer < len(blocks):
        raise ValueError(f"layer {layer} out of range for a model with {len(blocks)} blocks")
    if model.training:
        raise ValueError("model is in training mode (dropout); call model.eval() first")
    return blocks


@torch.no_grad()
def clean_forward(
    model: nn.Module,
    input_ids: torch.Tensor,
    layer: int,
    attention_mask: torch.Tensor | None = None,
) -> Prefix:
    """One ordinary forward; returns the clean logits and block ``layer``'s output."""
    blocks = _check_layer(model, layer)
    captured: dict[str, object] = {}

    def grab(_mod: nn.Module, _args: object, out: object) -> None:
        captured["out"] = out

    handle = blocks[layer].register_forward_hook(grab)
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    finally:
        handle.remove()
    if "out" not in captured:
        raise RuntimeError(f"block {layer} was not called in the forward pass")
    out = captured["out"]
    return Prefix(
        hidden=block_output(out),
        logits=logits,
        restructure=_restructurer(out),
        layer=layer,
        attention_mask=attention_mask,
    )


@contextmanager
def _bypass_prefix(
    blocks: nn.ModuleList, layer: int, emit: Callable[..., object]
) -> Iterator[None]:
    """Make blocks 0..layer return ``emit()`` without computing anything or firing hooks."""
    saved: list[tuple[nn.Module, Any, Any, Any]] = []
    try:
        for block in list(blocks)[: layer + 1]:
            saved.append(
                (
                    block,
                    block.__dict__.get("forward", _SENTINEL),
                    block._forward_hooks,
                    block._forward_pre_hooks,
                )
            )
            # An instance attribute shadows the class's forward; nn.Module.__call__ calls it.
            block.forward = emit  # type: ignore[method-assign]
            block._forward_hooks = OrderedDict()
            block._forward_pre_hooks = OrderedDict()
        yield
    finally:
        for block, fwd, hooks, pre_hooks in saved:
            if fwd is _SENTINEL:
                del block.forward
            else:
                block.forward = fwd  # type: ignore[method-assign]
            block._forward_hooks = hooks  # type: ignore[assignment]
            block._forward_pre_hooks = pre_hooks  # type: ignore[assignment]


@torch.no_grad()
def spliced_logits(model: nn.Module, prefix: Prefix, hidden: torch.Tensor) -> torch.Tensor:
    """Logits of the model with block ``prefix.layer``'s output replaced by ``hidden``.

    ``hidden`` must have shape ``[b, T, d]`` with ``b`` equal to the prefix's batch size or 1
    (a single sequence, e.g. the zero-ablation branch whose input is the same for every
    sequence). Equal to a full forward with a replacing forward hook on block ``layer``; the
    prefix is not recomputed.
    """
    blocks = _check_layer(model, prefix.layer)
    b, t, d = prefix.hidden.shape
    if hidden.ndim != 3 or hidden.shape[1:] != (t, d) or hidden.shape[0] not in (1, b):
        raise ValueError(f"hidden must be [{b} or 1, {t}, {d}], got {tuple(hidden.shape)}")
    hidden = hidden.to(prefix.hidden.dtype)
    attention_mask = prefix.attention_mask
    if attention_mask is not None and hidden.shape[0] != b:
        if not bool(attention_mask.all()):
            raise ValueError("a single-sequence branch needs an all-ones attention mask")
        attention_mask = attention_mask[:1]
    packed = prefix.restructure(hidden)

    def emit(*_args: object, **_kwargs: object) -> object:
        return packed

    # Placeholder input: never read by the bypassed blocks, but the model builds its mask,
    # position ids and rotary embeddings from its shape, dtype and device.
    placeholder = torch.zeros_like(hidden)
    with _bypass_prefix(blocks, prefix.layer, emit):
        return model(
            inputs_embeds=placeholder, attention_mask=attention_mask, use_cache=False
        ).logits
