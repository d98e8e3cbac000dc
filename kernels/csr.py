"""Latent-major view of TopK indices, shared by the torch path and the Triton kernels.

The TopK encoder produces a token-major table ``indices [N, k]``. Every gradient that lands on a
latent-indexed matrix (the decoder rows, the encoder rows) needs the transpose: for latent ``l``,
the list of flat positions ``n * k + j`` with ``indices[n, j] == l``. Building that once by a stable
sort lets both paths sum each latent's contributions in a fixed order, which makes the results
deterministic (no atomics) and avoids ever touching an ``N x L`` array.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(frozen=True)
class LatentCSR:
    """Compressed-sparse-row layout of the ``[L, N*k]`` incidence between latents and entries.

    offsets: int64 ``[L + 1]``; the entries of latent ``l`` are ``perm[offsets[l]:offsets[l + 1]]``.
    perm:    int64 ``[N * k]``; flat positions ``n * k + j`` grouped by latent id, ascending in ``n``
             within a latent (the sort is stable), so the summation order is reproducible.
    k:       entries per token, to recover the token of a flat position as ``perm // k``.
    """

    offsets: torch.Tensor
    perm: torch.Tensor
    k: int

    @property
    def n_latents(self) -> int:
        return self.offsets.numel() - 1

    def tokens(self) -> torch.Tensor:
        """Token id ``n`` of each sorted entry (the CSR column index).

        Computed once per layout: the torch path needs it for both weight gradients of a step.
        """
        return self._tokens

    @cached_property
    def _tokens(self) -> torch.Tensor:
        return torch.div(self.perm, self.k, rounding_mode="floor")


# One-entry memo: a training step needs the same layout twice (decoder-weight gradient, then
# encoder-weight gradient, for the same indices tensor), and the sort is ~5% of the sparse ops on
# CPU. Keyed on tensor identity (a weak reference, so a freed tensor can never alias a new one)
# plus its version counter (bumped by any in-place write).
_memo: tuple[weakref.ref[torch.Tensor], int, int, LatentCSR] | None = None


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # inference-mode tensors have no version counter: do not memoise
        return None


def clear_latent_csr_memo() -> None:
    """Forget the memoised layout (benchmarks use this to time the sort on every call)."""
    global _memo
    _memo = None


def latent_csr(indices: torch.Tensor, n_latents: int) -> LatentCSR:
    """Group the flat positions of ``indices [N, k]`` by latent id (memoised for the last tensor).

    The memo sees in-place writes through torch (they bump the version counter) but not writes
    that bypass it (``.data``, a NumPy view); rebuild with ``clear_latent_csr_memo()`` after those.
    Out-of-range ids are rejected on the CPU, where the check is free (the sorted ends are at hand
    without a device sync); on CUDA the caller is trusted, as TopK output always is in range.
    """
    global _memo
    version = _version(indices)
    memo = _memo
    if (
        memo is not None
        and version is not None
        and memo[0]() is indices
        and memo[1] == version
        and memo[2] == n_latents
    ):
        return memo[3]
    csr = _build_latent_csr(indices, n_latents)
    if version is not None:
        _memo = (weakref.ref(indices), version, n_latents, csr)
    return csr


def _build_latent_csr(indices: torch.Tensor, n_latents: int) -> LatentCSR:
    if indices.dim() != 2:
        raise ValueError(f"indices must be [N, k], got shape {tuple(indices.shape)}")
    flat = indices.reshape(-1).long()
    sorted_ids, perm = torch.sort(flat, stable=True)
    if flat.device.type == "cpu" and flat.numel() > 0:
        lo, hi = int(sorted_ids[0]), int(sorted_ids[-1])
        if lo < 0 or hi >= n_latents:
            raise IndexError(f"latent ids must lie in [0, {n_latents}), got range [{lo}, {hi}]")
        # On the CPU, counting is ~4x cheaper than binary searches for the bounds (same offsets).
        offsets = torch.zeros(n_latents + 1, dtype=torch.int64)
        torch.cumsum(torch.bincount(flat, minlength=n_latents), 0, out=offsets[1:])
    else:
        # searchsorted needs no host sync on CUDA (bincount would, to size its output).
        bounds = torch.arange(n_latents + 1, device=flat.device, dtype=flat.dtype)
        offsets = torch.searchsorted(sorted_ids, bounds)
    return LatentCSR(offsets=offsets, perm=perm, k=indices.shape[1])
