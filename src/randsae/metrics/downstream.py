"""Downstream metrics: next-token CE and KL with the SAE spliced into the hookpoint.

For every batch the prefix (embedding + blocks 0..layer) runs once (``splice.clean_forward``),
then the rest of the model runs for three hookpoint values: clean (the continuation of that same
forward), the SAE reconstruction, and zeros (``splice.spliced_logits``). CE and KL sums stream
into fp64 accumulators, so the result does not depend on how the eval set is batched.
Several SAEs of the same hookpoint share one pass (:func:`evaluate_batch_group`): the prefix,
the clean and the zero branch run once per batch, and each SAE adds its own spliced branch.

Which predictions count (the masking rule): the logits at position ``t`` predict token ``t+1``.
Positions ``0..T-2`` of each sequence count, i.e. every token except the first is a target, and
the last position (no target inside the sequence) is dropped. Additionally dropped: predictions
whose source or target position is padding (``attention_mask == 0``), and predictions whose
*target* is one of ``exclude_target_ids`` (e.g. a document separator, whose prediction says
nothing about the SAE; default: none). KL uses exactly the same positions as CE.

Position 0: both replaced branches treat it alike. By default the hookpoint is replaced at
every position, position 0 included, in the SAE and in the zero branch. With
``skip_first_position`` (activations cached with ``drop_first_position``: the SAE never saw
position 0) position 0 keeps its clean hidden state in *both* branches, and the prediction made
at position 0 is not counted, so the SAE and the zero ablation are compared on the same
positions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from randsae.metrics.coder import SparseCoder
from randsae.metrics.splice import Prefix, clean_forward, spliced_logits
from randsae.metrics.stats import ReconstructionStats

#: ce_score_unstable is set when CE_zero - CE_clean is below this many nats (the score's
#: denominator; with a gap of 0.1 nats a 0.005-nat estimation error moves the score by ~5%).
CE_UNSTABLE_GAP_NATS: float = 0.1
#: kl_score_unstable is set when KL_zero is below this many nats per token (same reasoning).
KL_UNSTABLE_NATS: float = 0.1
#: The only variant whose CE loss score means "fraction of the model's performance the SAE
#: recovers"; for random or noise-input models the clean CE is itself ~uniform.
CE_SCORE_MEANINGFUL_VARIANTS: frozenset[str] = frozenset({"trained"})
#: How the CE/KL reduction walks the logits. On a CPU with a vocabulary of at least
#: _CPU_ROW_MIN_VOCAB: one position at a time (:func:`_reduce_by_row`; one row's buffers stay
#: in a core's L2 cache; measured 20-25% faster than chunks of 2-8 rows at 49k). Otherwise in
#: chunks of positions: on a CPU about 512 KB of fp32 per buffer and at most _CPU_MAX_ROWS
#: rows, on an accelerator large chunks (128 MB per buffer), because there the cost is per
#: kernel launch.
_CPU_ROW_MIN_VOCAB = 8192
_CPU_CHUNK_ELEMENTS = 1 << 17
_CPU_MAX_ROWS = 8
_DEVICE_CHUNK_ELEMENTS = 1 << 25
#: Up to this many rows, row-wise dot products are taken as the diagonal of a tiny GEMM
#: (faster on the CPU than vecdot, which materialises the elementwise product).
_GEMM_DOT_MAX_ROWS = 8


def _chunk_rows(device: torch.device, vocab: int) -> int:
    """Positions per chunk; 1 selects the row-at-a-time path."""
    if device.type == "cpu":
        if vocab >= _CPU_ROW_MIN_VOCAB:
            return 1
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
        difference tensor is materialised). On a CPU positions are taken one at a time, else in
        chunks (see ``_chunk_rows``), so the buffers stay in cache; per-token values are fp32,
        sums across tokens fp64. When ``logits_zero`` has one sequence its log-softmax is
        computed once for all sequences.
        """
        mask = prediction_mask(input_ids, attention_mask, exclude_target_ids)
        b, t = input_ids.shape
        if logits_clean.shape[:2] != (b, t) or logits_sae.shape != logits_clean.shape:
            raise ValueError("logits must be [B, T, V] matching input_ids")
        if logits_zero.shape[0] not in (1, b) or logits_zero.shape[1:] != logits_clean.shape[1:]:
            raise ValueError("logits_zero must be [B or 1, T, V]")
        shared_zero = logits_zero.shape[0] == 1 and b > 1
        targets = input_ids[:, 1:].unsqueeze(-1)  # [B, T-1, 1]
        # Per prediction: log p_{clean,sae,zero}[target] and <p, lp_{clean,sae,zero}>.
        per_token = torch.empty(6, b, t - 1, dtype=torch.float32, device=logits_clean.device)
        lp_zero = None
        if shared_zero:  # the same logits for every sequence: normalise them once
            lp_zero = torch.log_softmax(logits_zero[0, :-1].float(), dim=-1)
            per_token[2] = lp_zero.expand(b, t - 1, -1).gather(-1, targets).squeeze(-1)
        rows = _chunk_rows(logits_clean.device, logits_clean.shape[-1])
        reduce_args = (logits_clean, logits_sae, logits_zero, lp_zero, targets, per_token)
        if rows == 1:
            _reduce_by_row(*reduce_args)
        else:
            _reduce_by_chunk(*reduce_args, rows)
        nll = per_token[:3].neg()
        kl = per_token[3:4] - per_token[4:6]  # <p, lp_clean> - <p, lp_branch>
        # Per-sequence sums (each a row reduction, the same whatever the batch), then added in
        # sequence order: the totals do not depend on the batch size, an execution setting.
        per_seq = torch.cat((nll, kl)).double().masked_fill(~mask, 0.0).sum(dim=-1).T.tolist()
        self.n_tokens += int(mask.sum())
        for sums in per_seq:
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


def _reduce_by_chunk(
    logits_clean: torch.Tensor,
    logits_sae: torch.Tensor,
    logits_zero: torch.Tensor,
    lp_zero: torch.Tensor | None,
    targets: torch.Tensor,
    per_token: torch.Tensor,
    rows: int,
) -> None:
    """Fill ``per_token`` (see :meth:`DownstreamStats.update`) in chunks of ``rows`` positions
    per sequence (the accelerator path: few, large kernels). ``lp_zero`` is the shared zero
    branch's log-softmax ``[T-1, V]``, or None when ``logits_zero`` has every sequence."""
    b, v, dev = logits_clean.shape[0], logits_clean.shape[-1], logits_clean.device
    n_lp = 3 if lp_zero is None else 2
    # Reused buffers: stacked log-probs [clean; sae(; zero)] of a chunk, and p_clean.
    lp = torch.empty(n_lp * rows, v, dtype=torch.float32, device=dev)
    p_buf = torch.empty(rows, v, dtype=torch.float32, device=dev)
    for i in range(b):
        chunks = zip(
            logits_clean[i, :-1].split(rows),
            logits_sae[i, :-1].split(rows),
            logits_zero[i, :-1].split(rows) if lp_zero is None else lp_zero.split(rows),
            targets[i].split(rows),
            per_token[:, i].split(rows, dim=1),
        )
        for lc, ls, lz, tg, out in chunks:
            r = lc.shape[0]
            lp_3d = lp[: n_lp * r].view(n_lp, r, v)  # contiguous for any r
            p_c = p_buf[:r]
            torch.log_softmax(lc, dim=-1, dtype=torch.float32, out=lp_3d[0])
            torch.log_softmax(ls, dim=-1, dtype=torch.float32, out=lp_3d[1])
            if lp_zero is None:
                torch.log_softmax(lz, dim=-1, dtype=torch.float32, out=lp_3d[2])
            torch.exp(lp_3d[0], out=p_c)
            out[:n_lp] = lp_3d.gather(-1, tg.expand(n_lp, r, 1)).squeeze(-1)
            out[3 : 3 + n_lp] = _rowdots(p_c, lp_3d)
            if lp_zero is not None:
                out[5] = _rowdots(p_c, lz.unsqueeze(0))[0]


def _reduce_by_row(
    logits_clean: torch.Tensor,
    logits_sae: torch.Tensor,
    logits_zero: torch.Tensor,
    lp_zero: torch.Tensor | None,
    targets: torch.Tensor,
    per_token: torch.Tensor,
) -> None:
    """Same as :func:`_reduce_by_chunk` one prediction at a time (the CPU path).

    On a CPU one row of a 49k vocabulary (192 KB per buffer) keeps every buffer in the core's
    L2 cache, and the cost is then the per-call overhead, so each row takes five or six calls
    on views made up front (``unbind``), with outputs written in place (``out=``). Rows go
    position-major, so a shared zero branch's row stays in cache for all sequences.
    """
    b, t1, v = logits_clean.shape[0], logits_clean.shape[1] - 1, logits_clean.shape[-1]
    dev = logits_clean.device
    n_lp = 3 if lp_zero is None else 2
    lp = torch.empty(n_lp, v, dtype=torch.float32, device=dev)  # [clean; sae(; zero)]
    lp_c, lp_s, *lp_z = lp.unbind(0)
    # p_clean of the current position for every sequence: the shared zero branch's dots are
    # then one matrix-vector product per position.
    p_all = torch.empty(b, v, dtype=torch.float32, device=dev)
    p_rows = p_all.unbind(0)
    # Outputs, position-major: [T-1, B, ...].
    at_target = torch.empty(t1, b, n_lp, 1, dtype=torch.float32, device=dev)
    dots = torch.empty(t1, b, n_lp, dtype=torch.float32, device=dev)
    zero_dots = torch.empty(t1, b, dtype=torch.float32, device=dev)

    def by_position(x: torch.Tensor) -> list[torch.Tensor]:
        """Views of ``x [B, T, ...]``'s first T-1 positions, position-major."""
        return [row for column in x[:, :t1].unbind(1) for row in column.unbind(0)]

    def flat(x: torch.Tensor) -> list[torch.Tensor]:
        return list(x.flatten(0, 1).unbind(0))

    work = zip(
        by_position(logits_clean),
        by_position(logits_sae),
        by_position(logits_zero) if lp_zero is None else [None] * (t1 * b),
        flat(targets.transpose(0, 1)),
        flat(at_target),
        flat(dots),
    )
    shared = () if lp_zero is None else tuple(zip(lp_zero.unbind(0), zero_dots.unbind(0)))
    for k, (lc, ls, lz, tg, at_t, dot) in enumerate(work):
        i = k % b
        p = p_rows[i]
        torch.log_softmax(lc, 0, dtype=torch.float32, out=lp_c)
        torch.log_softmax(ls, 0, dtype=torch.float32, out=lp_s)
        if lz is not None:
            torch.log_softmax(lz, 0, dtype=torch.float32, out=lp_z[0])
        torch.exp(lp_c, out=p)
        torch.mv(lp, p, out=dot)
        torch.index_select(lp, 1, tg, out=at_t)
        if shared and i == b - 1:  # every sequence done at this position
            lp_zero_t, zero_dots_t = shared[k // b]
            torch.mv(p_all, lp_zero_t, out=zero_dots_t)
    per_token[:n_lp] = at_target.squeeze(-1).permute(2, 1, 0)
    per_token[3 : 3 + n_lp] = dots.permute(2, 1, 0)
    if lp_zero is not None:
        per_token[5] = zero_dots.T


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


def _zero_logits(
    model: nn.Module,
    prefix: Prefix,
    attention_mask: torch.Tensor | None,
    single_zero_sequence: bool,
    zero_cache: dict[tuple[int, ...], torch.Tensor] | None,
) -> torch.Tensor:
    """The all-zeros branch: ``[1, T, V]`` (shared by every sequence, cached per length) when
    it may be, else ``[B, T, V]``. See :func:`evaluate_batch`."""
    b, t, d = prefix.hidden.shape
    no_padding = attention_mask is None or bool(attention_mask.all())
    zero_b = 1 if (single_zero_sequence and no_padding) else b
    key = (t, d)
    if zero_b == 1 and zero_cache is not None and key in zero_cache:
        return zero_cache[key]
    logits_zero = spliced_logits(model, prefix, prefix.hidden.new_zeros(zero_b, t, d))
    if zero_b == 1 and zero_cache is not None:
        zero_cache[key] = logits_zero
    return logits_zero


@dataclass
class SaeEval:
    """One sparse coder measured in a shared pass (:func:`evaluate_batch_group`), with its
    own accumulators: ``downstream`` gets its CE/KL sums, ``recon`` (if given) its
    reconstruction statistics; ``n_latents`` is its dictionary size (for the firing counts)."""

    sae: SparseCoder
    n_latents: int
    downstream: DownstreamStats
    recon: ReconstructionStats | None = None


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
    zero_cache: dict[tuple[int, ...], torch.Tensor] | None = None,
) -> None:
    """All SAE metrics for one batch of token sequences ``input_ids [B, T]``.

    Runs the prefix once, encodes/decodes block ``layer``'s output with ``sae`` (cast to
    ``sae_dtype`` if given), feeds ``recon`` (every non-padding position, except position 0
    with ``skip_first_position``) and ``downstream`` (the counted predictions, see the module
    doc). :func:`evaluate_batch_group` with one SAE; the options are explained there.
    """
    evaluate_batch_group(
        model, [SaeEval(sae, n_latents, downstream, recon)], input_ids, layer, attention_mask,
        exclude_target_ids, sae_dtype, single_zero_sequence, skip_first_position, zero_cache,
    )  # fmt: skip


@torch.no_grad()
def evaluate_batch_group(
    model: nn.Module,
    saes: Sequence[SaeEval],
    input_ids: torch.Tensor,
    layer: int,
    attention_mask: torch.Tensor | None = None,
    exclude_target_ids: Sequence[int] = (),
    sae_dtype: torch.dtype | None = None,
    single_zero_sequence: bool = True,
    skip_first_position: bool = False,
    zero_cache: dict[tuple[int, ...], torch.Tensor] | None = None,
) -> None:
    """All metrics of several SAEs of the same hookpoint for one batch ``input_ids [B, T]``.

    The prefix and the clean branch run once, the zero branch once, then each SAE adds only
    its own encode/decode, its spliced branch and its own statistics. Every SAE's statistics
    are exactly (bit for bit) those of evaluating it alone: the shared branches are the same
    computation whatever the other SAEs are, and each SAE's own work does not depend on them.
    Memory: the clean and zero logits and one SAE's logits at a time, as for one SAE.

    ``skip_first_position`` matches activations cached with ``drop_first_position``: the
    SAE never saw position 0, so position 0 is left out of the reconstruction statistics,
    keeps its clean hidden state in the SAE branch *and* in the zero branch (the two
    ablations differ only where the SAE acts), and the prediction made at position 0 is not
    counted. The zero branch's input then differs per sequence (its clean position 0), so it
    runs for every sequence and ``single_zero_sequence`` and ``zero_cache`` do not apply.

    ``single_zero_sequence``: without ``skip_first_position`` the zero branch's input (all
    zeros) is the same for every sequence, and so are its position ids, so its logits are the
    same for every sequence; it is then computed for one sequence and broadcast. Exact for
    models whose layers after the hookpoint see only the hidden state, positions and mask
    (GPT-NeoX, Llama, GPT-2 and other standard decoders); only used when there is no padding.
    Set False to run it for every sequence.

    ``zero_cache``: for the same reason the single zero sequence's logits are the same for
    every batch of the same length; pass one dict for all batches of one evaluation (same
    model, same layer) and the zero branch runs once per evaluation instead of once per
    batch. Never share it between models or layers.
    """
    if not saes:
        raise ValueError("evaluate_batch_group: no SAEs to evaluate")
    prefix = clean_forward(model, input_ids, layer, attention_mask)
    h = prefix.hidden
    b, t, d = h.shape
    x = h.reshape(b * t, d)
    x_in = x if sae_dtype is None else x.to(sae_dtype)
    counted = torch.ones(b, t, dtype=torch.bool, device=h.device) if attention_mask is None else attention_mask.bool()
    if skip_first_position:
        counted = counted.clone()
        counted[:, 0] = False
    # The zero branch does not depend on the SAE: once for all of them.
    if skip_first_position:  # position 0 as in the SAE branch: clean, per sequence
        zeros = h.new_zeros(b, t, d)
        zeros[:, 0] = h[:, 0]
        logits_zero = spliced_logits(model, prefix, zeros)
    else:
        logits_zero = _zero_logits(model, prefix, attention_mask, single_zero_sequence, zero_cache)
    count_mask = counted.long() if (skip_first_position or attention_mask is not None) else None
    for one in saes:
        values, indices = one.sae.encode(x_in)
        x_hat = one.sae.decode(values, indices)
        if one.recon is not None:
            _update_recon(one.recon, x, x_hat, values, indices, counted, one.n_latents)
        spliced = x_hat.reshape(b, t, d).to(h.dtype)
        if skip_first_position:
            spliced = spliced.clone()
            spliced[:, 0] = h[:, 0]
        logits_sae = spliced_logits(model, prefix, spliced)
        one.downstream.update(
            prefix.logits, logits_sae, logits_zero, input_ids, count_mask, exclude_target_ids
        )
        del logits_sae  # before the next SAE's branch: one SAE's logits in memory at a time


def _update_recon(
    recon: ReconstructionStats,
    x: torch.Tensor,
    x_hat: torch.Tensor,
    values: torch.Tensor,
    indices: torch.Tensor,
    counted: torch.Tensor,
    n_latents: int,
) -> None:
    """Feed ``recon`` the counted positions (``counted [B, T]``) of a batch whose rows are
    ``B * T`` flattened positions. One update per sequence, so the fp64 sums are grouped the
    same way whatever the batch size (an execution setting): the row is then bitwise
    independent of batching."""
    b, t = counted.shape
    for i in range(b):
        rows = slice(i * t, (i + 1) * t)
        keep = counted[i]
        if bool(keep.all()):
            recon.update(x[rows], x_hat[rows], values[rows], indices[rows], n_latents)
        else:
            recon.update(x[rows][keep], x_hat[rows][keep], values[rows][keep], indices[rows][keep], n_latents)
