"""Training loop for TopK SAEs: one pass over the activations trains one or several SAEs.

Per batch and per SAE: forward (top-k and, when latents are dead, the AuxK selection), loss =
FVU + auxk_coef * AuxK, hand-written sparse backward, decoder-parallel gradient removal, global
gradient-norm clipping, fused Adam with linear warmup then ``lr_schedule`` (linear decay to zero by default, or constant), decoder
renormalisation, dead-counter update. Checkpoints (all state, including the data cursor and
RNG states) are written atomically every ``checkpoint_every_steps`` (an execution setting: not in
cfg.json nor in the checkpoint's identity); a start with checkpoints
present resumes from the newest, and on the CPU the final weights are bitwise those of an
uninterrupted run. Definitions and defaults: docs/sae.md.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from randsae.errors import RandsaeError
from randsae.kernels import sparse_decode
from randsae.sae import checkpoint as ckpt
from randsae.sae.config import SaeConfig
from randsae.sae.data import ActivationStream
from randsae.sae.model import COMPUTE_DTYPES, TopKSAE
from randsae.sae.stats import geometric_median, sum_of_squares, total_variance
from randsae.sae.train_log import LOG_FILE, LogAccumulator, write_log

CHECKPOINT_VERSION = 1
SUMMARY_FILE = "train_summary.json"


class TrainResult(NamedTuple):
    """Final statistics of one SAE (loss/fvu/auxk_loss/l0 are means over the last log interval)."""

    out_dir: str
    steps: int
    tokens: int
    loss: float
    fvu: float
    auxk_loss: float
    l0: float
    dead_fraction: float
    nonfinite_rows: int
    zero_variance_batches: int
    resumed_from_step: int | None
    seconds: float


class CheckpointMismatchError(RandsaeError, ValueError):
    """The checkpoint directory holds a run with a different config or different data."""


@dataclass
class _Member:
    """One SAE being trained, with everything of its own that a checkpoint must hold."""

    cfg: SaeConfig
    out_dir: Path
    model: TopKSAE
    opt: torch.optim.Optimizer
    since_fired: torch.Tensor  # int64 [L]: training tokens since each latent last fired
    log: LogAccumulator


@dataclass
class _Progress:
    """Run-wide counters (shared by all members)."""

    planned_steps: int
    step: int = 0
    tokens: int = 0
    zero_variance_batches: int = 0


@dataclass
class _Run:
    """Everything the loop and the checkpoints share."""

    members: list[_Member]
    prog: _Progress
    stream: ActivationStream
    checkpoint_dir: Path
    signature: dict[str, Any]
    device: torch.device


class _StepStats(NamedTuple):
    loss: torch.Tensor
    fvu: torch.Tensor
    auxk: torch.Tensor
    l0: torch.Tensor


# -- public entry points ------------------------------------------------------------------------


def train_sae(
    acts_path: str | Path,
    out_dir: str | Path,
    cfg: SaeConfig,
    checkpoint_dir: str | Path,
    *,
    device: str | torch.device | None = None,
    expected_d_model: int | None = None,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train one TopK SAE on the activation array at ``acts_path``; see :func:`train_saes`."""
    return train_saes(
        acts_path,
        [out_dir],
        [cfg],
        checkpoint_dir,
        device=device,
        expected_d_model=expected_d_model,
        progress=progress,
        on_step=on_step,
    )[0]


def train_saes(
    acts_path: str | Path,
    out_dirs: Sequence[str | Path],
    cfgs: Sequence[SaeConfig],
    checkpoint_dir: str | Path,
    *,
    device: str | torch.device | None = None,
    expected_d_model: int | None = None,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> list[TrainResult]:
    """Train several SAEs on the same batches (configs may differ only in ``seed``).

    Writes sae.safetensors, cfg.json, train_log.parquet and train_summary.json into each out
    dir. ``on_step(step)`` runs after every step (after any checkpoint): a test hook, e.g. to
    simulate a kill by raising.
    """
    _check_members(out_dirs, cfgs)
    dev = torch.device(device) if device is not None else _default_device()
    cfg0 = cfgs[0]
    t0 = time.perf_counter()
    ckpt.remove_temporaries(checkpoint_dir)
    stream = ActivationStream(
        acts_path,
        batch_size=cfg0.batch_size,
        shuffle_buffer_tokens=cfg0.shuffle_buffer_tokens,
        shuffle_block_sequences=cfg0.shuffle_block_sequences,
        data_seed=cfg0.data_seed,
        max_tokens=cfg0.max_tokens,
        expected_d_model=expected_d_model,
    )
    with stream:
        for c in cfgs:
            c.check_for_width(stream.d_model)
        if cfg0.max_tokens is None and stream.n_tokens < cfg0.batch_size:
            raise ValueError(
                f"{acts_path}: {stream.n_tokens} rows, fewer than one batch of {cfg0.batch_size}"
            )
        signature = _signature(cfgs, stream)
        members, prog, first, resumed = _start(
            checkpoint_dir, signature, cfgs, out_dirs, stream, dev
        )
        run = _Run(members, prog, stream, Path(checkpoint_dir), signature, dev)
        _run_loop(run, first, progress, on_step)
        if prog.step == 0:
            raise ValueError(f"{acts_path}: no usable batch (all batches had zero variance)")
        _save_checkpoint(run)
        counters = {**stream.counters(), "zero_variance_batches": prog.zero_variance_batches}
    seconds = time.perf_counter() - t0
    return [_finish(m, prog, counters, resumed, seconds) for m in members]


# -- setup --------------------------------------------------------------------------------------


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_members(out_dirs: Sequence[str | Path], cfgs: Sequence[SaeConfig]) -> None:
    if not cfgs or len(out_dirs) != len(cfgs):
        raise ValueError(f"need one out_dir per config, got {len(out_dirs)} and {len(cfgs)}")
    if len({str(Path(d).resolve()) for d in out_dirs}) != len(out_dirs):
        raise ValueError("out_dirs must be distinct")
    base = cfgs[0].replace(seed=0)
    for c in cfgs[1:]:
        if c.replace(seed=0) != base:
            diff = sorted(
                k for k, v in c.to_dict().items() if k != "seed" and v != getattr(base, k)
            )
            raise ValueError(f"SAEs trained together may differ only in seed; also differ: {diff}")


def _signature(cfgs: Sequence[SaeConfig], stream: ActivationStream) -> dict[str, Any]:
    """What a checkpoint must match to be resumed by this call."""
    return {
        "checkpoint_version": CHECKPOINT_VERSION,
        "configs": [c.to_dict() for c in cfgs],
        "n_tokens": stream.n_tokens,
        "d_model": stream.d_model,
        "logical_dtype": stream.logical_dtype,
    }


def _new_member(
    cfg: SaeConfig, out_dir: str | Path, d_model: int, b_dec: torch.Tensor | None, dev: torch.device
) -> _Member:
    n_lat = cfg.n_latents(d_model)
    model = TopKSAE.initialised(
        d_model,
        n_lat,
        cfg.k,
        cfg.seed,
        b_dec=b_dec,
        compute_dtype=COMPUTE_DTYPES[cfg.dtype],
        device=dev,
    )
    model.config = cfg
    return _Member(
        cfg=cfg,
        out_dir=Path(out_dir),
        model=model,
        opt=_make_optimizer(model, cfg.resolved_lr(d_model)),
        since_fired=torch.zeros(n_lat, dtype=torch.int64, device=dev),
        log=LogAccumulator(dev),
    )


def _make_optimizer(model: TopKSAE, lr: float) -> torch.optim.Optimizer:
    """Adam (betas 0.9/0.999, eps 1e-8) with the fused single-kernel update where available."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(model.parameters(), lr=lr, foreach=True)


def _init_b_dec(cfg: SaeConfig, batch: torch.Tensor) -> torch.Tensor:
    x = batch.to(torch.float32)
    return geometric_median(x) if cfg.b_dec_init == "geometric_median" else x.mean(dim=0)


def _start(
    checkpoint_dir: str | Path,
    signature: dict[str, Any],
    cfgs: Sequence[SaeConfig],
    out_dirs: Sequence[str | Path],
    stream: ActivationStream,
    dev: torch.device,
) -> tuple[list[_Member], _Progress, torch.Tensor | None, int | None]:
    """Resume from the newest checkpoint, or initialise from the first batch.

    Returns (members, progress, first batch still to train on or None, resumed step or None).
    """
    latest = ckpt.latest_checkpoint(checkpoint_dir)
    members = [_new_member(c, o, stream.d_model, None, dev) for c, o in zip(cfgs, out_dirs)]
    if latest is not None:
        state = ckpt.load_checkpoint(latest, map_location=dev)
        _check_signature(state["signature"], signature, latest)
        prog = _restore(state, members, stream, stream.expected_batches)
        return members, prog, None, prog.step
    first = stream.next_batch()
    if first is None:
        raise ValueError(f"{stream.path}: the stream yields no batch")
    b_dec = _init_b_dec(cfgs[0], first.to(dev))
    for m in members:
        with torch.no_grad():
            m.model.b_dec.copy_(b_dec)
    return members, _Progress(stream.expected_batches), first, None


def _check_signature(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    if saved != current:
        diff = sorted(k for k in current if saved.get(k) != current[k])
        raise CheckpointMismatchError(
            f"{path} belongs to a different run (differs in {diff}); use another checkpoint_dir "
            "or delete it"
        )


# -- the loop -----------------------------------------------------------------------------------


def _run_loop(
    run: _Run, first: torch.Tensor | None, progress: bool, on_step: Callable[[int], None] | None
) -> None:
    """Train on every batch the stream still yields (``first`` before them, if given)."""
    bar = tqdm(
        total=run.stream.expected_batches * run.stream.batch_size,
        initial=run.prog.tokens,
        unit="tok",
        unit_scale=True,
        disable=not progress,
        desc="sae",
        dynamic_ncols=True,
        mininterval=2.0,
    )
    with bar:
        batch = first
        while batch is not None or (batch := run.stream.next_batch()) is not None:
            if _train_batch(run.members, run.prog, batch.to(run.device, non_blocking=True)):
                _after_step(run, bar)
                if on_step is not None:
                    on_step(run.prog.step)
            batch = None
        _flush_logs(run.members, run.prog)


def _train_batch(members: list[_Member], prog: _Progress, x: torch.Tensor) -> bool:
    """One optimizer step of every member on x; False (and counted) if x has zero variance."""
    xf = x.to(torch.float32)
    var = total_variance(xf)
    if not bool(var > 0):
        prog.zero_variance_batches += 1
        return False
    for m in members:
        lr = planned_lr(m.cfg, m.model.d_model, prog.step, prog.planned_steps)
        stats, fired = _forward_backward(m, xf, var)
        _optimizer_step(m, lr)
        update_dead_counters(m.since_fired, fired, x.shape[0])
        m.log.add(*stats)
    prog.step += 1
    prog.tokens += x.shape[0]
    return True


def _after_step(run: _Run, bar: tqdm) -> None:
    """Progress bar, log rows and checkpoints at their intervals."""
    cfg, step = run.members[0].cfg, run.prog.step
    bar.update(run.stream.batch_size)
    if step % cfg.log_every_steps == 0:
        row = _flush_logs(run.members, run.prog)[0]
        if row is not None:
            bar.set_postfix(
                fvu=f"{row['fvu']:.4f}", dead=f"{row['dead_fraction']:.3f}", refresh=False
            )
    if step % cfg.checkpoint_every_steps == 0:
        _save_checkpoint(run)


def _flush_logs(members: list[_Member], prog: _Progress) -> list[dict[str, Any] | None]:
    rows = []
    for m in members:
        lr = planned_lr(m.cfg, m.model.d_model, max(prog.step - 1, 0), prog.planned_steps)
        rows.append(m.log.emit(prog.step, prog.tokens, dead_fraction(m), lr))
    return rows


# -- one step -----------------------------------------------------------------------------------


def lr_at(step: int, peak_lr: float, warmup_steps: int, total_steps: int | None = None) -> float:
    """Learning rate of the optimizer step with 0-based index ``step``.

    Linear warmup from peak/warmup to peak over ``warmup_steps`` steps; then constant when
    ``total_steps`` is None, else linear decay towards zero at step ``total_steps`` (the last
    step, total_steps - 1, still gets a small positive rate).
    """
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if total_steps is None or total_steps <= warmup_steps:
        return peak_lr
    return peak_lr * max(0.0, (total_steps - step) / (total_steps - warmup_steps))


def planned_lr(cfg: SaeConfig, d_model: int, step: int, planned_steps: int) -> float:
    """The learning rate ``cfg`` prescribes for ``step`` of a run planned to take ``planned_steps``."""
    total = planned_steps if cfg.lr_schedule == "linear_decay" else None
    return lr_at(step, cfg.resolved_lr(d_model), cfg.warmup_steps, total)


def dead_mask(since_fired: torch.Tensor, window_tokens: int) -> torch.Tensor:
    """Latents that have not fired in the last ``window_tokens`` training tokens."""
    return since_fired >= window_tokens


def dead_fraction(m: _Member) -> float:
    return float(dead_mask(m.since_fired, m.cfg.dead_window_tokens).float().mean())


def update_dead_counters(since_fired: torch.Tensor, fired: torch.Tensor, n_tokens: int) -> None:
    """Add the batch's tokens to every counter, then zero the counters of latents that fired
    (a non-zero activation on any token of the batch). Counted in tokens, not steps."""
    since_fired.add_(n_tokens)
    since_fired.masked_fill_(fired, 0)


def auxk_loss(
    model: TopKSAE, aux_values: torch.Tensor, aux_indices: torch.Tensor, residual: torch.Tensor
) -> torch.Tensor:
    """AuxK: how well the top-k_aux dead latents reconstruct the main reconstruction's error
    (detached), normalised by that error's total variance (an FVU of the residual)."""
    aux_hat = sparse_decode(aux_values, aux_indices, model.W_dec)
    denom = total_variance(residual).clamp_min(torch.finfo(torch.float32).tiny)
    return (aux_hat - residual).pow(2).sum() / denom


def _forward_backward(
    m: _Member, xf: torch.Tensor, var: torch.Tensor
) -> tuple[_StepStats, torch.Tensor]:
    """Loss and gradients of one member; returns its stats and the mask of latents that fired."""
    model, cfg = m.model, m.cfg
    use_aux = cfg.auxk_coef > 0
    dead = dead_mask(m.since_fired, cfg.dead_window_tokens) if use_aux else None
    out = model(xf, dead, cfg.resolved_auxk_k(model.d_model) if use_aux else 0)
    err = out.x_hat - xf
    fvu = sum_of_squares(err) / var
    aux = torch.zeros((), device=xf.device)
    if out.aux_values is not None and out.aux_indices is not None:
        aux = auxk_loss(model, out.aux_values, out.aux_indices, -err.detach())
    loss = fvu + cfg.auxk_coef * aux
    loss.backward()
    active = out.values > 0
    fired = torch.zeros(model.n_latents, dtype=torch.bool, device=xf.device)
    fired[out.indices[active]] = True
    l0 = active.sum(dim=1, dtype=torch.float32).mean()
    return _StepStats(loss.detach(), fvu.detach(), aux.detach(), l0), fired


def _optimizer_step(m: _Member, lr: float) -> None:
    """Decoder-parallel gradient removal, clipping, Adam, decoder renormalisation."""
    m.model.remove_parallel_decoder_grad_()
    if m.cfg.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(m.model.parameters(), m.cfg.grad_clip, foreach=True)
    for group in m.opt.param_groups:
        group["lr"] = lr
    m.opt.step()
    m.opt.zero_grad(set_to_none=True)
    m.model.normalize_decoder_()


# -- checkpoints --------------------------------------------------------------------------------


def _save_checkpoint(run: _Run) -> None:
    members, prog = run.members, run.prog
    state = {
        "signature": run.signature,
        "progress": {
            "step": prog.step,
            "tokens": prog.tokens,
            "zero_variance_batches": prog.zero_variance_batches,
        },
        "stream": run.stream.state_dict(),
        "rng": ckpt.capture_rng_states(),
        "members": [
            {
                "model": m.model.state_dict(),
                "optimizer": m.opt.state_dict(),
                "since_fired": m.since_fired,
                "log": m.log.state_dict(),
            }
            for m in members
        ],
    }
    ckpt.save_checkpoint(run.checkpoint_dir, prog.step, state)


def _restore(
    state: dict[str, Any], members: list[_Member], stream: ActivationStream, planned_steps: int
) -> _Progress:
    for m, s in zip(members, state["members"]):
        m.model.load_state_dict(s["model"])
        m.opt.load_state_dict(s["optimizer"])
        m.since_fired.copy_(s["since_fired"])
        m.log.load_state_dict(s["log"])
    stream.load_state_dict(state["stream"])
    ckpt.restore_rng_states(state["rng"])
    p = state["progress"]
    return _Progress(
        planned_steps, int(p["step"]), int(p["tokens"]), int(p["zero_variance_batches"])
    )


# -- outputs ------------------------------------------------------------------------------------


def _finish(
    m: _Member, prog: _Progress, counters: dict[str, int], resumed: int | None, seconds: float
) -> TrainResult:
    """Write the SAE, its log and a summary into its out dir; return its final statistics."""
    m.out_dir.mkdir(parents=True, exist_ok=True)
    m.model.save(m.out_dir)
    last = m.log.rows[-1]
    result = TrainResult(
        out_dir=str(m.out_dir),
        steps=prog.step,
        tokens=prog.tokens,
        loss=last["loss"],
        fvu=last["fvu"],
        auxk_loss=last["auxk_loss"],
        l0=last["l0"],
        dead_fraction=last["dead_fraction"],
        nonfinite_rows=counters["nonfinite_rows"],
        zero_variance_batches=counters["zero_variance_batches"],
        resumed_from_step=resumed,
        seconds=seconds,
    )
    summary = {**result._asdict(), **counters, "config": m.cfg.to_dict()}
    meta = {"randsae.counters": json.dumps(counters, sort_keys=True)}
    write_log(m.out_dir / LOG_FILE, m.log.rows, metadata=meta)
    tmp = m.out_dir / f".{SUMMARY_FILE}.tmp"
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, m.out_dir / SUMMARY_FILE)
    return result
