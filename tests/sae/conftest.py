"""Fixtures for the SAE tests: synthetic activations written to real Zarr arrays via zarr_io."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import zarr

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
def make_seq_acts(tmp_path: Path) -> Callable[..., Path]:
    """Write [n_seq * rows_per_seq, d] rows the way the activations stage lays them out: the
    rows_per_seq / n_seq attributes, whole sequences per chunk (and per shard, if given)."""

    def make(
        x: torch.Tensor,
        rows_per_seq: int,
        seqs_per_chunk: int,
        name: str,
        seqs_per_shard: int | None = None,
        logical: str = "float32",
    ) -> Path:
        n_seq, rem = divmod(x.shape[0], rows_per_seq)
        assert rem == 0, "test data must be whole sequences"
        path = tmp_path / name
        chunks = (seqs_per_chunk * rows_per_seq, x.shape[1])
        shards = None if seqs_per_shard is None else (seqs_per_shard * rows_per_seq, x.shape[1])
        arr = zarr.create_array(
            store=str(path),
            shape=tuple(x.shape),
            chunks=chunks,
            shards=shards,
            dtype=zarr_io.DTYPES[logical][1],
            compressors=zarr_io.default_compressors(),
            zarr_format=3,
            fill_value=0,
        )
        attrs = {zarr_io.LOGICAL_DTYPE_ATTR: logical, "rows_per_seq": rows_per_seq}
        arr.attrs.update({**attrs, "n_seq": n_seq})
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
            shuffle_block_sequences=500,  # = make_acts' default chunk (arrays without rows_per_seq)
            checkpoint_every_steps=7,
            log_every_steps=5,
        )
        base.update(over)
        return SaeConfig(**base)

    return make
