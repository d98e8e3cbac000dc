"""The one thing the metrics need from an SAE: a TopK encode/decode pair.

The metrics never look at weights, so any sparse coder that hands back its active latents in
TopK form (values and indices, ``k`` per token) can be measured: the trainer's TopK SAE, a
reference implementation in a test, or a baseline such as a token-lookup coder.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class SparseCoder(Protocol):
    """A sparse coder in TopK form.

    ``encode(x)`` takes activations ``x`` of shape ``[N, d]`` and returns ``(values, indices)``,
    both ``[N, k]``; ``indices`` are int64 latent ids, unique within a row, and a value of exactly
    0 means "this slot did not fire" (TopK after a ReLU can select zeros). ``decode(values,
    indices)`` returns the reconstruction ``x_hat`` of shape ``[N, d]``.
    """

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def decode(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor: ...
