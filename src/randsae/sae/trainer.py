"""Training loop for TopK SAEs: one pass over the activations trains one or several SAEs, of
one layer or of several (one stream per layer, all advanced in the same loop, so a streamed
forward pass serves every layer; see :func:`train_parts`).

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
from randsae.sae.data import ActivationStream, WindowedStream
from randsae.sae.model import COMPUTE_DTYPES, TopKSAE
from randsae.sae.stats import geometric_median, sum_of_squares, total_variance
from randsae.sae.train_log import LOG_FILE, LogAccumulator, write_log

# 2: one checkpoint holds every part (stream and its SAEs) of a run
CHECKPOINT_VERSION = 2
#: SaeConfig fields that define the data order: SAEs sharing a stream must agree on them.
DATA_ORDER_FIELDS = ("batch_size", "data_seed", "shuffle_buffer_tokens", "shuffle_block_sequences", "max_tokens")
#: Fields the loop applies per stream (log rows) or per run (checkpoints).
LOOP_FIELDS = ("log_every_steps", "checkpoint_every_steps")
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
class _Part:
    """One stream and the SAEs trained on it."""

    stream: WindowedStream
    members: list[_Member]
    prog: _Progress
    done: bool = False


@dataclass
class _Run:
    """Everything the loop and the checkpoints share."""

    parts: list[_Part]
    checkpoint_dir: Path
    signature: dict[str, Any]
    device: torch.device
    checkpoint_every_steps: int
    step: int = 0  # rounds of the loop in which some part trained (= the steps, for one part)


class TrainPart(NamedTuple):
    """One stream of a run and the SAEs trained on it (one out dir per config)."""

    stream: WindowedStream
    out_dirs: Sequence[str | Path]
    cfgs: Sequence[SaeConfig]


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
    """Train several SAEs on the same batches of the array at ``acts_path`` (their configs
    must agree on the data order and loop fields, :data:`DATA_ORDER_FIELDS` and
    :data:`LOOP_FIELDS`; they may differ in anything else: seed, expansion, k, lr, ...).

    Writes sae.safetensors, cfg.json, train_log.parquet and train_summary.json into each out
    dir. ``on_step(step)`` runs after every step (after any checkpoint): a test hook, e.g. to
    simulate a kill by raising.
    """
    if not cfgs:
        raise ValueError("need at least one SAE config")
    cfg0 = cfgs[0]
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
        return train_parts(
            [TrainPart(stream, out_dirs, cfgs)], checkpoint_dir, device=device, progress=progress, on_step=on_step
        )[0]


def train_parts(
    parts: Sequence[TrainPart],
    checkpoint_dir: str | Path,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    round_sync: Callable[[bool], bool] | None = None,
) -> list[list[TrainResult]]:
    """Train every part's SAEs on its stream, all parts in one loop; results per part.

    Each round of the loop takes the next batch of every part's stream (a part whose stream
    has ended drops out), so streams that share a source (the layers of one forward pass,
    :mod:`randsae.sae.stream`) advance together. An SAE sees exactly the batches of its own
    stream, in order, whatever else is in the run: its bytes equal a run of that SAE alone.
    One checkpoint holds every part; ``on_step(round)`` runs after each round in which some
    part trained. The caller opens and closes the streams.

    ``round_sync(trained_here)`` says whether a round counts (advances the round count that
    times and names checkpoints): one rank of a distributed run trains only some parts, and
    counts the rounds in which some part trained on any rank (:mod:`randsae.sae.distributed`).
    """
    _check_parts(parts)
    dev = torch.device(device) if device is not None else _default_device()
    t0 = time.perf_counter()
    ckpt.remove_temporaries(checkpoint_dir)
    for part in parts:
        for c in part.cfgs:
            c.check_for_width(part.stream.d_model)
        c0 = part.cfgs[0]
        if c0.max_tokens is None and part.stream.n_tokens < c0.batch_size:
            raise ValueError(
                f"{part.stream.path}: {part.stream.n_tokens} rows, fewer than one batch of {c0.batch_size}"
            )
    signature = _signature(parts)
    run, firsts, resumed = _start(checkpoint_dir, signature, parts, dev)
    _run_loop(run, firsts, progress, on_step, round_sync)
    for done in run.parts:
        if done.prog.step == 0:
            raise ValueError(f"{done.stream.path}: no usable batch (all batches had zero variance)")
    _save_checkpoint(run)
    seconds = time.perf_counter() - t0
    out = []
    for done in run.parts:
        counters = {**done.stream.counters(), "zero_variance_batches": done.prog.zero_variance_batches}
        out.append([_finish(m, done.prog, counters, resumed, seconds) for m in done.members])
    return out


# -- setup --------------------------------------------------------------------------------------


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_parts(parts: Sequence[TrainPart]) -> None:
    if not parts:
        raise ValueError("need at least one stream to train on")
    dirs = [str(Path(d).resolve()) for p in parts for d in p.out_dirs]
    if len(set(dirs)) != len(dirs):
        raise ValueError("out_dirs must be distinct")
    for p in parts:
        if not p.cfgs or len(p.out_dirs) != len(p.cfgs):
            raise ValueError(f"need one out_dir per config, got {len(p.out_dirs)} and {len(p.cfgs)}")
        base = p.cfgs[0]
        for c in p.cfgs[1:]:
            diff = sorted(f for f in DATA_ORDER_FIELDS + LOOP_FIELDS if getattr(c, f) != getattr(base, f))
            if diff:
                raise ValueError(f"SAEs trained on one stream must agree on the data order and loop; differ: {diff}")
        if p.stream.batch_size != base.batch_size or p.stream.data_seed != base.data_seed:
            raise ValueError(f"{p.stream.path}: the stream's batch_size/data_seed are not its SAEs'")
    every = {p.cfgs[0].checkpoint_every_steps for p in parts}
    if len(every) > 1:
        raise ValueError(f"parts of one run must share checkpoint_every_steps, got {sorted(every)}")


def _signature(parts: Sequence[TrainPart]) -> dict[str, Any]:
    """What a checkpoint must match to be resumed by this call (per part, in order)."""
    return {
        "checkpoint_version": CHECKPOINT_VERSION,
        "configs": [[c.to_dict() for c in p.cfgs] for p in parts],
        "n_tokens": [p.stream.n_tokens for p in parts],
        "d_model": [p.stream.d_model for p in parts],
        "logical_dtype": [p.stream.logical_dtype for p in parts],
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
    parts: Sequence[TrainPart],
    dev: torch.device,
) -> tuple[_Run, list[torch.Tensor | None], int | None]:
    """Resume from the newest checkpoint, or initialise every part from its first batch.

    Returns (run, each part's first batch still to train on or None, resumed step or None).
    """
    latest = ckpt.latest_checkpoint(checkpoint_dir)
    run = _Run(
        parts=[
            _Part(
                p.stream,
                [_new_member(c, o, p.stream.d_model, None, dev) for c, o in zip(p.cfgs, p.out_dirs)],
                _Progress(p.stream.expected_batches),
            )
            for p in parts
        ],
        checkpoint_dir=Path(checkpoint_dir),
        signature=signature,
        device=dev,
        checkpoint_every_steps=parts[0].cfgs[0].checkpoint_every_steps,
    )
    if latest is not None:
        state = ckpt.load_checkpoint(latest, map_location=dev)
        _check_signature(state["signature"], signature, latest)
        _restore(state, run)
        return run, [None] * len(parts), run.step
    firsts: list[torch.Tensor | None] = []
    for part in run.parts:
        first = part.stream.next_batch()
        if first is None:
            raise ValueError(f"{part.stream.path}: the stream yields no batch")
        x = first.to(dev)
        b_decs: dict[str, torch.Tensor] = {}  # one per init rule (the same bits either way)
        for m in part.members:
            rule = m.cfg.b_dec_init
            if rule not in b_decs:
                b_decs[rule] = _init_b_dec(m.cfg, x)
            with torch.no_grad():
                m.model.b_dec.copy_(b_decs[rule])
        firsts.append(first)
    return run, firsts, None


def _check_signature(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    if saved != current:
        diff = sorted(k for k in current if saved.get(k) != current[k])
        raise CheckpointMismatchError(
            f"{path} belongs to a different run (differs in {diff}); use another checkpoint_dir "
            "or delete it"
        )


# -- the loop -----------------------------------------------------------------------------------


def _run_loop(
    run: _Run,
    firsts: list[torch.Tensor | None],
    progress: bool,
    on_step: Callable[[int], None] | None,
    round_sync: Callable[[bool], bool] | None = None,
) -> None:
    """Train on every batch the streams still yield (each part's ``first`` before them)."""
    bar = tqdm(
        total=sum(p.stream.expected_batches * p.stream.batch_size for p in run.parts),
        initial=sum(p.prog.tokens for p in run.parts),
        unit="tok",
        unit_scale=True,
        disable=not progress,
        desc="sae",
        dynamic_ncols=True,
        mininterval=2.0,
    )
    pending = list(firsts)
    with bar:
        while not all(p.done for p in run.parts):
            stepped = False
            for i, part in enumerate(run.parts):
                if part.done:
                    continue
                batch, pending[i] = pending[i], None
                if batch is None:
                    batch = part.stream.next_batch()
                if batch is None:
                    part.done = True
                    _flush_logs(part.members, part.prog)
                    continue
                if _train_batch(part.members, part.prog, batch.to(run.device, non_blocking=True)):
                    stepped = True
                    _after_step(part, bar)
            if round_sync is not None:
                stepped = round_sync(stepped)
            if stepped:
                run.step += 1
                if run.step % run.checkpoint_every_steps == 0:
                    _save_checkpoint(run)
                if on_step is not None:
                    on_step(run.step)


def _train_batch(members: list[_Member], prog: _Progress, x: torch.Tensor) -> bool:
    """One optimizer step of every member on x; False (and counted) if x has zero variance."""
    xf, var = batch_variance(x)
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


def batch_variance(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` in float32 and its total variance; a batch whose variance is not > 0 is skipped and
    counted. The distributed data server applies the same test to decide the round count."""
    xf = x.to(torch.float32)
    return xf, total_variance(xf)


def _after_step(part: _Part, bar: tqdm) -> None:
    """Progress bar and log rows at their interval."""
    bar.update(part.stream.batch_size)
    if part.prog.step % part.members[0].cfg.log_every_steps == 0:
        row = _flush_logs(part.members, part.prog)[0]
        if row is not None:
            bar.set_postfix(
                fvu=f"{row['fvu']:.4f}", dead=f"{row['dead_fraction']:.3f}", refresh=False
            )


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
    state = {
        "signature": run.signature,
        "step": run.step,
        "rng": ckpt.capture_rng_states(),
        "parts": [
            {
                "done": part.done,
                "progress": {
                    "step": part.prog.step,
                    "tokens": part.prog.tokens,
                    "zero_variance_batches": part.prog.zero_variance_batches,
                },
                "stream": part.stream.state_dict(),
                "members": [
                    {
                        "model": m.model.state_dict(),
                        "optimizer": m.opt.state_dict(),
                        "since_fired": m.since_fired,
                        "log": m.log.state_dict(),
                    }
                    for m in part.members
                ],
            }
            for part in run.parts
        ],
    }
    ckpt.save_checkpoint(run.checkpoint_dir, run.step, state)


def _restore(state: dict[str, Any], run: _Run) -> None:
    for part, ps in zip(run.parts, state["parts"]):
        for m, s in zip(part.members, ps["members"]):
            m.model.load_state_dict(s["model"])
            m.opt.load_state_dict(s["optimizer"])
            m.since_fired.copy_(s["since_fired"])
            m.log.load_state_dict(s["log"])
        part.stream.load_state_dict(ps["stream"])
        p = ps["progress"]
        part.prog = _Progress(
            part.stream.expected_batches, int(p["step"]), int(p["tokens"]), int(p["zero_variance_batches"])
        )
        part.done = bool(ps["done"])
    ckpt.restore_rng_states(state["rng"])
    run.step = int(state["step"])


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
