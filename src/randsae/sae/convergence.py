"""How close an SAE's training came to convergence, read from its training log.

The statistic (docs/sae.md, "Convergence"): what the last 20% of the optimizer steps gained in
training FVU. One log row is a mean over ``log_every_steps`` steps of batches that differ, so a
single row's FVU is noisy (about +-0.01 at 256-row batches); the statistic therefore compares the
step-weighted mean FVU of the log rows covering the 10% of steps before the 80% mark with that of
the rows covering the last 10% of steps. A positive value is an improvement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

#: Fraction of the steps whose gain is measured (the issue's "last 20%").
LAST_FRACTION = 0.2
#: Width, as a fraction of the steps, of the window averaged at each end of that span.
WINDOW_FRACTION = 0.1
#: An SAE whose last 20% of steps gained less training FVU than this counts as converged.
CONVERGED_BELOW = 0.01


class Convergence(NamedTuple):
    """The FVU gain of the last ``LAST_FRACTION`` of an SAE's steps."""

    steps: int  # the run's last logged step
    fvu_before: float  # mean training FVU over steps (0.7 S, 0.8 S]
    fvu_end: float  # mean training FVU over steps (0.9 S, S]
    improvement: float  # fvu_before - fvu_end
    converged: bool  # improvement < CONVERGED_BELOW


def _window_mean(steps: Sequence[int], fvu: Sequence[float], lo: float, hi: float) -> tuple[float, set[int]]:
    """Step-weighted mean FVU of the rows whose interval (previous row's step, row's step]
    overlaps (lo, hi], each weighted by the overlap; and the indices of those rows."""
    total = weight = 0.0
    prev = 0
    rows: set[int] = set()
    for i, (s, f) in enumerate(zip(steps, fvu)):
        overlap = max(0.0, min(s, hi) - max(prev, lo))
        if overlap > 0:
            total += overlap * f
            weight += overlap
            rows.add(i)
        prev = s
    if weight == 0:
        raise ValueError(f"no training-log rows cover steps ({lo:g}, {hi:g}]")
    return total / weight, rows


def convergence(steps: Sequence[int], fvu: Sequence[float]) -> Convergence:
    """The convergence statistic of one training log (its ``step`` and ``fvu`` columns, rows in
    step order). Needs the two windows to be told apart: no log row may reach into both (about
    five evenly spaced rows or more); a coarser log is an error, since a row shared by both
    windows pulls the gain towards 0 and would read as converged. A non-finite FVU gives a
    non-finite gain, which does not count as converged."""
    if len(steps) != len(fvu) or not steps:
        raise ValueError("need one FVU per step, and at least one row")
    if steps[0] < 1:
        raise ValueError(f"training-log steps count optimizer steps from 1, got {steps[0]}")
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError("training-log steps must increase")
    last = float(steps[-1])
    start = last * (1 - LAST_FRACTION)
    before, before_rows = _window_mean(steps, fvu, start - WINDOW_FRACTION * last, start)
    end, end_rows = _window_mean(steps, fvu, last - WINDOW_FRACTION * last, last)
    if shared := before_rows & end_rows:
        row = min(shared)
        raise ValueError(
            f"training log too coarse for the convergence statistic: its {len(steps)} rows over "
            f"{steps[-1]} steps put the row ending at step {steps[row]} into both windows "
            f"(steps ({start - WINDOW_FRACTION * last:g}, {start:g}] and ({last - WINDOW_FRACTION * last:g}, "
            f"{last:g}]); log more often (sae.log_every_steps) or train longer"
        )
    gain = before - end
    return Convergence(int(steps[-1]), before, end, gain, bool(gain < CONVERGED_BELOW))
