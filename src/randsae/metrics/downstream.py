"""Downstream metrics: next-token CE and KL with the SAE spliced into the hookpoint.

For every batch the prefix (embedding + blocks 0..layer) runs once (``splice.clean_forward``),
then the rest of the model runs for three hookpoint values: clean (the continuation of that same
forward), the SAE reconstruction, and zeros (``splice.spliced_logits``). CE and KL sums stream
into fp64 accumulators, so the result does not depend on how the eval set is batched.

Which predictions count (the masking rule): the logits at position ``t`` predict token ``t+1``.
Positions ``0..T-2`` of each sequence count, i.e. every token except the first is a target, and
the last position (no target inside the sequence) is dropped. Additionally dropped: predictions
whose source or target position is padding (``attention_mask == 0``), and predictions whose
*target* is one of ``exclude_target_ids`` (e.g. a document separator, whose prediction says
nothing about the SAE; default: none). KL uses exactly the same positions as CE.

The hookpoint is replaced at *every* position, position 0 included, for both the SAE and the
zero branch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from randsae.metrics.coder import SparseCoder
from randsae.metrics.splice import clean_forward, spliced_logits
from randsae.metrics.stats import ReconstructionStats

#: ce_score_unstable is set when CE_zero - CE_clean is below this many nats (the score's
#: denominator; with a gap of 0.1 nats a 0.005-nat estimation error moves the score by ~5%).
CE_UNSTABLE_GAP_NATS: float = 0.1
#: kl_score_unstable is set when KL_zero is below this many nats per token (same reasoning).
KL_UNSTABLE_NATS: float = 0.1
#: The only variant whose CE loss score means "fraction of the model's performance the SAE
#: recovers"; for random or noise-input models the clean CE is itself ~uniform.
CE_SCORE_MEANINGFUL_VARIANTS: frozenset[str] = frozenset({"trained"})
#: Logit elements per chunk in the CE/KL reduction. On the CPU: 512 KB of fp32 per buffer, so
#: a chunk's few buffers stay in a core's L2 cache (measured: ~2x faster than chunks that
#: spill to memory), and at most _CPU_MAX_ROWS positions. On an accelerator: large chunks
#: (128 MB per buffer), because there the cost is per kernel launch.
_CPU_CHUNK_ELEMENTS = 1 << 17
_CPU_MAX_ROWS = 8
_DEVICE_CHUNK_ELEMENTS = 1 << 25
#: Up to this many rows, row-wise dot products are taken as the diagonal of a tiny GEMM
#: (faster on the CPU than vecdot, which materialises the elementwise product).
_GEMM_DOT_MAX_ROWS = 8


def _chunk_rows(device: torch.device, vocab: int) -> int:
    if device.type == "cpu":
        return min(_CPU_MAX_ROWS, max(1, _CPU_CHUNK_ELEMENTS // vocab))
    return max(1, _DEVICE_CHUNK_ELEMENTS // vocab)


def _rowdots(p: torch.Tensor, lp: torch.Tensor) -> torch.Tensor:
    """``out[j, k] = <p[k], lp[j, k]>`` for ``p [r, V]`` and ``lp [n, r, V]`` (contiguous)."""
    n, r, v = lp.shape
    if r <= _GEMM_DOT_MAX_ROWS:
        return torch.mm(p, lp.view(n * r, v).T).view(r, n, r).diagonal(dim1=0, dim2=2)
    return torch.linalg.vecdot(p.unsqueeze(0), lp, dim=-1)


@dataclass(frozen=True)
class DownstreamResult:
    """CE / KL metrics for one SAE (see docs/metrics.md)."""

    ce_n_tokens: int
    ce_clean: float
    ce_sae: float
    ce_zero: float
    delta_ce: float
    ce_loss_score: float
    kl_sae: float
    kl_zero: float
    kl_score: float
    ce_score_unstable: bool
    kl_score_unstable: bool
    ce_score_meaningful: bool


def _nan_div(num: float, den: float) -> float:
    return num / den if den != 0 else float("nan")


@dataclass
class DownstreamStats:
    """fp64 sums of per-token NLL and KL over the counted predictions."""

    n_tokens: int = 0
    nll_clean: float = 0.0
    nll_sae: float = 0.0
    nll_zero: float = 0.0
    kl_sae: float = 0.0
    kl_zero: float = 0.0

    @torch.no_grad()
    def update(
        self,
        logits_clean: torch.Tensor,
        logits_sae: torch.Tensor,
        logits_zero: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        exclude_target_ids: Sequence[int] = (),
    ) -> None:
        """Add one batch. Logits ``[B, T, V]`` (``logits_zero`` may be ``[1, T, V]``: broadcast).

        Cost matters here: this reduction over the vocabulary runs for three sets of logits per
        token and can cost as much as the LM head. Per token, with ``lp = log_softmax(logits)``
        (one fused kernel) and ``p = exp(lp_clean)``:

            NLL_branch = -lp_branch[target]
            KL(clean || branch) = <p, lp_clean> - <p, lp_branch>

        (the textbook ``sum p (log p - log q)`` split into two row-wise dot products, so no
        difference tensor is materialised). Sequences are processed in chunks of positions
        small enough to stay in cache; per-token values are fp32, sums across tokens fp64. When
        ``logits_zero`` has one sequence its log-softmax is computed once for all sequences.
        """
        mask = prediction_mask(input_ids, attention_mask, exclude_target_ids)
        b, t = input_ids.shape
        if logits_clean.shape[:2] != (b, t) or logits_sae.shape != logits_clean.shape:
            raise ValueError("logits must be [B, T, V] matching input_ids")
        if logits_zero.shape[0] not in (1, b) or logits_zero.shape[1:] != logits_clean.shape[1:]:
            raise ValueError("logits_zero must be [B or 1, T, V]")
        shared_zero = logits_zero.shape[0] == 1 and b > 1
        if shared_zero:  # the same logits for every sequence: normalise them once
            lp_zero_all = torch.log_softmax(logits_zero[0, :-1].float(), dim=-1)
        v, dev = logits_clean.shape[-1], logits_clean.device
        rows = _chunk_rows(dev, v)
        targets = input_ids[:, 1:].unsqueeze(-1)  # [B, T-1, 1]
        n_lp = 2 if shared_zero else 3
        # Reused buffers (allocating them per chunk costs about as much as the arithmetic):
        # stacked log-probs [clean; sae(; zero)] of a chunk, and p_clean.
        lp = torch.empty(n_lp * rows, v, dtype=torch.float32, device=dev)
        p_buf = torch.empty(rows, v, dtype=torch.float32, device=dev)
        # Per prediction: log p_{clean,sae,zero}[target] and <p, lp_{clean,sae,zero}>.
        per_token = torch.empty(6, b, t - 1, dtype=torch.float32, device=dev)
        if shared_zero:
            per_token[2] = lp_zero_all.expand(b, t - 1, v).gather(-1, targets).squeeze(-1)
        for i in range(b):
            lc_i, ls_i, tg_i, out_i = logits_clean[i], logits_sae[i], targets[i], per_token[:, i]
            for t0 in range(0, t - 1, rows):
                t1 = min(t - 1, t0 + rows)
                r = t1 - t0
                lp_3d = lp[: n_lp * r].view(n_lp, r, v)  # contiguous for any r
                p_c = p_buf[:r]
                torch.log_softmax(lc_i[t0:t1].float(), dim=-1, out=lp_3d[0])
                torch.log_softmax(ls_i[t0:t1].float(), dim=-1, out=lp_3d[1])
                if not shared_zero:
                    torch.log_softmax(logits_zero[i, t0:t1].float(), dim=-1, out=lp_3d[2])
                torch.exp(lp_3d[0], out=p_c)
                tg = tg_i[t0:t1].expand(n_lp, r, 1)
                out_i[:n_lp, t0:t1] = lp_3d.gather(-1, tg).squeeze(-1)
                out_i[3 : 3 + n_lp, t0:t1] = _rowdots(p_c, lp_3d)
                if shared_zero:
                    out_i[5, t0:t1] = _rowdots(p_c, lp_zero_all[t0:t1].unsqueeze(0))[0]
        nll = per_token[:3].neg()
        kl = per_token[3:4] - per_token[4:6]  # <p, lp_clean> - <p, lp_branch>
        sums = torch.cat((nll, kl))[:, mask].double().sum(dim=-1).tolist()
        self.n_tokens += int(mask.sum())
        self.nll_clean += sums[0]
        self.nll_sae += sums[1]
        self.nll_zero += sums[2]
        self.kl_sae += sums[3]
        self.kl_zero += sums[4]

    def merge(self, other: DownstreamStats) -> DownstreamStats:
        """Fold another accumulator into this one (in place; returns self)."""
        for name in ("n_tokens", "nll_clean", "nll_sae", "nll_zero", "kl_sae", "kl_zero"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def result(
        self,
        variant: str,
        ce_unstable_gap: float = CE_UNSTABLE_GAP_NATS,
        kl_unstable: float = KL_UNSTABLE_NATS,
    ) -> DownstreamResult:
        """The metrics; ``variant`` (e.g. "trained", "control") sets ``ce_score_meaningful``."""
        if self.n_tokens == 0:
            raise ValueError("no predictions were counted")
        n = self.n_tokens
        ce_clean, ce_sae, ce_zero = self.nll_clean / n, self.nll_sae / n, self.nll_zero / n
        kl_sae, kl_zero = self.kl_sae / n, self.kl_zero / n
        gap = ce_zero - ce_clean
        return DownstreamResult(
            ce_n_tokens=n,
            ce_clean=ce_clean,
            ce_sae=ce_sae,
            ce_zero=ce_zero,
            delta_ce=ce_sae - ce_clean,
            ce_loss_score=_nan_div(ce_zero - ce_sae, gap),
            kl_sae=kl_sae,
            kl_zero=kl_zero,
            kl_score=_nan_div(kl_zero - kl_sae, kl_zero),
            ce_score_unstable=bool(not math.isfinite(gap) or gap < ce_unstable_gap),
            kl_score_unstable=bool(not math.isfinite(kl_zero) or kl_zero < kl_unstable),
            ce_score_meaningful=variant in CE_SCORE_MEANINGFUL_VARIANTS,
        )


def prediction_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    exclude_target_ids: Sequence[int] = (),
) -> torch.Tensor:
    """Bool ``[B, T-1]``: which predictions (position t -> target t+1) count. See module doc."""
    if input_ids.ndim != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be [B, T] with T >= 2, got {tuple(input_ids.shape)}")
    targets = input_ids[:, 1:]
    mask = torch.ones_like(targets, dtype=torch.bool)
    if attention_mask is not None:
        am = attention_mask.bool()
        mask &= am[:, 1:] & am[:, :-1]
    if len(exclude_target_ids):
        excl = torch.as_tensor(list(exclude_target_ids), dtype=targets.dtype, device=targets.device)
        mask &= ~torch.isin(targets, excl)
    return mask


@torch.no_grad()
def evaluate_batch(
    model: nn.Module,
    sae: SparseCoder,
    input_ids: torch.Tensor,
    layer: int,
    n_latents: int,
    downstream: DownstreamStats,
    recon: ReconstructionStats | None = None,
    attention_mask: torch.Tensor | None = None,
    exclude_target_ids: Sequence[int] = (),
    sae_dtype: torch.dtype | None = None,
    single_zero_sequence: bool = True,
    skip_first_position: bool = False,
) -> None:
    """All SAE metrics for one batch of token sequences ``input_ids [B, T]``.

    ``skip_first_position`` matches activations cached with ``drop_first_position``: the
    SAE never saw position 0, so position 0 is left out of the reconstruction statistics,
    keeps its clean hidden state in the SAE branch, and the prediction made at position 0
    is not counted. The zero branch still zeroes every position (plain zero ablation).

    Runs the prefix once, encodes/decodes block ``layer``'s output with ``sae`` (cast to
    ``sae_dtype`` if given), feeds ``recon`` (all non-padding positions, position 0 included)
    and ``downstream`` (the counted predictions, see the module doc).

    ``single_zero_sequence``: the zero branch's input (all zeros) is the same for every
    sequence, and so are its position ids, so its logits are the same for every sequence; it is
    then computed for one sequence and broadcast. Exact for models whose layers after the
    hookpoint see only the hidden state, positions and mask (GPT-NeoX, Llama, GPT-2 and other
    standard decoders); only used when there is no padding. Set False to run it for every
    sequence.
    """
    prefix = clean_forward(model, input_ids, layer, attention_mask)
    h = prefix.hidden
    b, t, d = h.shape
    x = h.reshape(b * t, d)
    x_in = x if sae_dtype is None else x.to(sae_dtype)
    values, indices = sae.encode(x_in)
    x_hat = sae.decode(values, indices)
    counted = torch.ones(b, t, dtype=torch.bool, device=h.device) if attention_mask is None else attention_mask.bool()
    if skip_first_position:
        counted = counted.clone()
        counted[:, 0] = False
    if recon is not None:
        keep = counted.reshape(-1)
        if bool(keep.all()):
            recon.update(x, x_hat, values, indices, n_latents)
        else:
            recon.update(x[keep], x_hat[keep], values[keep], indices[keep], n_latents)
    spliced = x_hat.reshape(b, t, d).to(h.dtype)
    if skip_first_position:
        spliced = spliced.clone()
        spliced[:, 0] = h[:, 0]
    logits_sae = spliced_logits(model, prefix, spliced)
    no_padding = attention_mask is None or bool(attention_mask.all())
    zero_b = 1 if (single_zero_sequence and no_padding) else b
    logits_zero = spliced_logits(model, prefix, h.new_zeros(zero_b, t, d))
    count_mask = counted.long() if (skip_first_position or attention_mask is not None) else None
    downstream.update(
        prefix.logits, logits_sae, logits_zero, input_ids, count_mask, exclude_target_ids
    )
