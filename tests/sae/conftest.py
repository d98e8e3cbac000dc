"""Fixtures for the SAE tests: synthetic activations written to real Zarr arrays via zarr_io."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from randsae import zarr_io
from randsae.sae import SaeConfig


def _sparse_mixture(
    n: int, d: int, n_dirs: int = 64, active: int = 3, seed: int = 0, offset: float = 0.5
) -> torch.Tensor:
    """Rows = sparse non-negative combinations of random unit directions, plus a constant offset
    (so b_dec has something to learn): data a TopK SAE can reconstruct almost perfectly."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_dirs, d, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    idx = torch.rand(n, n_dirs, generator=g).argsort(dim=1)[:, :active]
    coef = torch.rand(n, active, generator=g) * 2 + 0.5
    return (coef.unsqueeze(-1) * dirs[idx]).sum(dim=1) + offset


@pytest.fixture
def sparse_mixture() -> Callable[..., torch.Tensor]:
    return _sparse_mixture


@pytest.fixture
def make_acts(tmp_path: Path) -> Callable[..., Path]:
    """Write a [n, d] tensor as a randsae Zarr array; returns its path."""

    def make(
        x: torch.Tensor,
        name: str = "acts",
        chunk: int = 500,
        logical: str = "float32",
        attrs: dict[str, Any] | None = None,
    ) -> Path:
        path = tmp_path / name
        arr = zarr_io.create_array(path, tuple(x.shape), (chunk, *x.shape[1:]), logical, attrs)
        zarr_io.write_rows(arr, 0, x)
        return path

    return make


@pytest.fixture
def small_cfg() -> Callable[..., SaeConfig]:
    """A config small enough for a unit test; keyword arguments override fields."""

    def make(**over: Any) -> SaeConfig:
        base: dict[str, Any] = dict(
            expansion_factor=4,
            k=4,
            lr=4e-3,
            warmup_steps=5,
            batch_size=128,
            auxk_k=8,
            dead_window_tokens=1024,
            shuffle_buffer_tokens=1000,
            checkpoint_every_steps=7,
            log_every_steps=5,
        )
        base.update(over)
        return SaeConfig(**base)

    return make
