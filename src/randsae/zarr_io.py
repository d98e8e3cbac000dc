"""Zarr v3 helpers shared by every stage that stores tensors.

Zarr has no bfloat16 dtype, so bf16 tensors are stored as their raw 16 bits in a uint16
array and the array carries the attribute ``logical_dtype`` ("bfloat16", "float16" or
"float32"). Readers must go through :func:`from_storage` / :func:`read_rows`, which
reinterpret the bits; nothing is ever rounded on the way in or out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from zarr.codecs import BloscCodec

LOGICAL_DTYPE_ATTR = "logical_dtype"

#: logical dtype name -> (torch dtype, numpy storage dtype)
DTYPES: dict[str, tuple[torch.dtype, str]] = {
    "float32": (torch.float32, "float32"),
    "float16": (torch.float16, "float16"),
    "bfloat16": (torch.bfloat16, "uint16"),
    "int32": (torch.int32, "int32"),
    "uint8": (torch.uint8, "uint8"),
}


def default_compressors() -> list[Any]:
    """Blosc/LZ4 level 5 with bit-shuffle (strings, not enums, so zarr 3.1-3.4 all accept it).

    Chosen on real residual activations (benchmarks/README.md): bf16 compresses 1.17-1.41x
    at about twice the write and read speed of zstd, whose level 3 with bit-shuffle often
    falls back to storing bf16 blocks raw (1.00x)."""
    return [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")]


def torch_dtype(logical: str) -> torch.dtype:
    try:
        return DTYPES[logical][0]
    except KeyError:
        raise ValueError(f"unknown logical dtype {logical!r}; allowed: {sorted(DTYPES)}") from None


def to_storage(t: torch.Tensor, logical: str) -> np.ndarray:
    """Tensor -> numpy array in the storage dtype (bf16 as raw uint16 bits)."""
    t = t.detach().to("cpu", torch_dtype(logical)).contiguous()
    if logical == "bfloat16":
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def from_storage(a: np.ndarray, logical: str) -> torch.Tensor:
    """Numpy array in storage dtype -> tensor of the logical dtype (bit-exact)."""
    if logical == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a))


def create_array(
    path: str | Path,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    logical: str,
    attrs: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> zarr.Array:
    """Create a compressed Zarr v3 array whose attributes record its logical dtype."""
    arr = zarr.create_array(
        store=str(path),
        shape=shape,
        chunks=chunks,
        dtype=DTYPES[logical][1],
        compressors=default_compressors(),
        zarr_format=3,
        fill_value=0,
        overwrite=overwrite,
    )
    arr.attrs.update({LOGICAL_DTYPE_ATTR: logical, **(attrs or {})})
    return arr


def open_array(path: str | Path, mode: str = "r") -> zarr.Array:
    arr = zarr.open_array(str(path), mode=mode)  # type: ignore[arg-type]
    if LOGICAL_DTYPE_ATTR not in arr.attrs:
        raise ValueError(f"{path}: not a randsae array (no {LOGICAL_DTYPE_ATTR!r} attribute)")
    return arr


def logical_dtype(arr: zarr.Array) -> str:
    return str(arr.attrs[LOGICAL_DTYPE_ATTR])


def read_rows(arr: zarr.Array, start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) of a randsae array as a tensor of its logical dtype."""
    return from_storage(np.asarray(arr[start:stop]), logical_dtype(arr))


def write_rows(arr: zarr.Array, start: int, t: torch.Tensor) -> None:
    arr[start : start + t.shape[0]] = to_storage(t, logical_dtype(arr))
