"""Fast row-wise top-k for TopK SAE pre-activations.

``torch.topk`` over a [N, L] matrix with k << L costs about a third of the encoder matmul on CPU.
Two observations make it cheaper without changing the result:

1. Split each row into groups of ``group`` entries. The k largest entries of the row all lie in
   the k groups with the largest maxima (an entry outside those groups is beaten by k group
   maxima). So a cheap vectorised max over groups, a top-k over L/group group maxima and a top-k
   over the k*group gathered candidates give the exact top-k. Any partition works: 32-bit
   values use contiguous groups (cheap to gather), 16-bit values strided ones (group j = entries
   j, j + L/group, ...), whose max is an elementwise max of row slices, which CPUs vectorise far
   better for 16-bit integers than a reduction over short contiguous runs.
   The k-th largest group maximum is a threshold that at least k entries reach, and usually
   barely more than k: the final top-k runs over only those (``_topk_above``).
2. Only non-negative entries matter (ReLU follows), and for non-negative IEEE floats the order of
   the bit patterns read as signed integers is the numeric order; every negative float reads as a
   negative integer. Integer max/top-k run faster than float ones (no NaN handling), and bf16 is
   read as int16 which avoids CPU bf16 arithmetic entirely.

Result: the same multiset of ReLU'd values as ``relu(pre).topk(k)``; among tied values (and among
entries <= 0, which all become 0) the chosen latent may differ, deterministically.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

_INT_VIEW = {
    torch.float32: torch.int32,
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
}


def topk_nonneg(pre: torch.Tensor, k: int, group: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row of ``pre`` [N, L] -> (values [N, k] as in ``pre``, indices [N, k] int64).

    Exact for positive entries; entries <= 0 are interchangeable (they are ReLU'd to 0 later).
    Falls back to ``torch.topk`` when the grouping would not pay off.
    """
    n, n_lat = pre.shape
    n_groups = n_lat // group
    if (
        n_lat % group
        or n_groups < 4 * k
        or pre.dtype not in _INT_VIEW
        or not pre.is_contiguous()
        or pre.device.type != "cpu"
    ):
        values, idx = pre.topk(k, dim=1, sorted=False)
        return values, idx
    key = pre.view(_INT_VIEW[pre.dtype])
    if pre.element_size() == 2:
        cols = _strided_candidates(key, k, group)
    else:
        cols = _contiguous_candidates(key, k, group)
    pos = _topk_above(cols.candidates, cols.threshold, k)  # positions among the candidates
    idx = cols.latents(pos)
    return pre.gather(1, idx), idx


class _Candidates(NamedTuple):
    """The k*group candidate entries of each row (from the k groups with the largest maxima)."""

    candidates: torch.Tensor  # [N, k * group], integer view
    threshold: torch.Tensor  # [N, 1]: the k-th largest group maximum
    latents: Callable[[torch.Tensor], torch.Tensor]  # positions among candidates -> latent ids


def _contiguous_candidates(key: torch.Tensor, k: int, group: int) -> _Candidates:
    n, n_lat = key.shape
    n_groups = n_lat // group
    top_max, top_groups = key.view(n, n_groups, group).amax(-1).topk(k, dim=1, sorted=False)
    rows = top_groups + torch.arange(n, device=key.device).unsqueeze(1) * n_groups
    cand = key.view(n * n_groups, group).index_select(0, rows.view(-1)).view(n, k * group)

    def latents(pos: torch.Tensor) -> torch.Tensor:
        first = top_groups.gather(1, torch.div(pos, group, rounding_mode="floor")) * group
        return first + pos % group

    return _Candidates(cand, top_max.amin(dim=1, keepdim=True), latents)


def _strided_candidates(key: torch.Tensor, k: int, group: int) -> _Candidates:
    n, n_lat = key.shape
    n_groups = n_lat // group
    top_max, top_groups = key.view(n, group, n_groups).amax(1).topk(k, dim=1, sorted=False)
    step = torch.arange(group, device=key.device) * n_groups
    cols = (top_groups.unsqueeze(-1) + step).view(n, k * group)
    return _Candidates(
        key.gather(1, cols),
        top_max.amin(dim=1, keepdim=True),
        lambda pos: cols.gather(1, pos),
    )


def _topk_above(cand: torch.Tensor, threshold: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the k largest entries of each row of ``cand``, given a per-row threshold
    that at least k entries reach (the k-th largest group maximum).

    Typically only slightly more than k entries reach it, so they are compacted into a narrow
    padded matrix first and the final top-k runs over that instead of all k*group candidates.
    """
    n = cand.shape[0]
    mask = cand >= threshold
    counts = mask.sum(dim=1)
    width = int(counts.max())
    rows, cols = mask.nonzero(as_tuple=True)
    slot = torch.arange(rows.numel(), device=cand.device) - (torch.cumsum(counts, 0) - counts)[rows]
    packed = torch.full(
        (n, width), torch.iinfo(cand.dtype).min, dtype=cand.dtype, device=cand.device
    )
    packed_pos = torch.zeros((n, width), dtype=torch.int64, device=cand.device)
    packed[rows, slot] = cand[rows, cols]
    packed_pos[rows, slot] = cols
    return packed_pos.gather(1, packed.topk(k, dim=1, sorted=False).indices)
