"""The convergence statistic: what the last 20% of an SAE's training steps gained in FVU."""

from __future__ import annotations

import math

import numpy as np
import pytest

from randsae.sae.convergence import CONVERGED_BELOW, convergence


def _log(n_rows: int, every: int, curve) -> tuple[list[int], list[float]]:
    steps = [every * (i + 1) for i in range(n_rows)]
    return steps, [float(curve(s)) for s in steps]


def test_a_curve_that_flattens_converges():
    # exponential approach to 0.2 with a time constant of 5% of the run: flat long before 80%
    steps, fvu = _log(100, 10, lambda s: 0.2 + 0.8 * math.exp(-s / 50))
    c = convergence(steps, fvu)
    assert c.steps == 1000 and c.converged
    assert 0 <= c.improvement < 1e-6 and c.fvu_end == pytest.approx(0.2, abs=1e-6)


def test_a_steadily_decreasing_curve_does_not_converge():
    # FVU falls linearly from 1.0 to 0.5 over 1000 steps: 0.05 per 10% of the run
    steps, fvu = _log(100, 10, lambda s: 1.0 - 0.5 * s / 1000)
    c = convergence(steps, fvu)
    assert not c.converged
    # window means: rows 710..800 (centre 755) and 910..1000 (centre 955), 20% of the run apart
    assert c.improvement == pytest.approx(0.1, abs=1e-12)
    assert c.fvu_before == pytest.approx(1.0 - 0.5 * 755 / 1000) and c.fvu_end == pytest.approx(1.0 - 0.5 * 955 / 1000)
    assert c.improvement == pytest.approx(c.fvu_before - c.fvu_end)


def test_threshold_is_strict():
    # a gain just under and just over CONVERGED_BELOW
    for gain, expected in ((CONVERGED_BELOW * 0.99, True), (CONVERGED_BELOW * 1.01, False)):
        steps = list(range(1, 11))
        fvu = [1.0] * 8 + [1.0 - gain] * 2  # rows are single steps: before = step 8, end = steps 10
        c = convergence(steps, fvu)
        assert c.improvement == pytest.approx(gain) and c.converged is expected


def test_window_weighting_with_an_uneven_last_row():
    """Rows every 100 steps and a partial last row at 1050: last = 1050, windows (735, 840] and
    (945, 1050]; each row weighs by its steps inside the window."""
    steps = [*range(100, 1001, 100), 1050]
    fvu = [float(20 - i) for i in range(len(steps))]  # row value = 20 - its index: the weights are readable
    c = convergence(steps, fvu)
    # before: row 800 (700, 800] overlaps 65 steps, row 900 (800, 900] 40 steps
    assert c.fvu_before == pytest.approx((65 * 13 + 40 * 12) / 105)
    # end: row 1000 (900, 1000] overlaps 55 steps, row 1050 (1000, 1050] 50 steps
    assert c.fvu_end == pytest.approx((55 * 11 + 50 * 10) / 105)
    assert c.steps == 1050 and c.improvement == pytest.approx(c.fvu_before - c.fvu_end) and not c.converged


def test_noise_is_averaged_over_the_window():
    """Row noise of +-0.01 (one row's batch noise) on a flat curve stays well under the threshold,
    because each side averages 10% of the rows; a single row at each end would not."""
    rng = np.random.default_rng(0)
    steps = list(range(10, 2001, 10))
    fvu = list(0.3 + rng.normal(0, 0.01, len(steps)))
    c = convergence(steps, fvu)
    assert c.converged and abs(c.improvement) < 0.005
    assert abs(fvu[159] - fvu[-1]) > abs(c.improvement)  # the 80% row vs the last row: noisier


def test_non_finite_fvu_is_not_converged():
    steps, fvu = _log(20, 10, lambda s: 0.3)
    fvu[-1] = math.nan
    c = convergence(steps, fvu)
    assert math.isnan(c.improvement) and not c.converged


@pytest.mark.parametrize(
    ("steps", "fvu", "match"),
    [
        ([], [], "at least one row"),
        ([10, 20], [0.5], "one FVU per step"),
        ([0, 10, 20], [0.5, 0.4, 0.3], "from 1, got 0"),
        ([10, 30, 20], [0.5, 0.4, 0.3], "must increase"),
        ([10, 10, 20], [0.5, 0.4, 0.3], "must increase"),
        ([32], [0.5], "too coarse.*1 rows over 32 steps"),  # one row: both windows would be that row
        ([10, 20, 30, 32], [0.9, 0.5, 0.4, 0.39], "row ending at step 30 into both windows"),
    ],
)
def test_errors_name_the_problem(steps, fvu, match):
    with pytest.raises(ValueError, match=match):
        convergence(steps, fvu)


def test_five_even_rows_are_enough():
    steps, fvu = _log(5, 200, lambda s: 1.0 - s / 2000)
    c = convergence(steps, fvu)  # before = row 800 alone, end = row 1000 alone
    assert c.fvu_before == pytest.approx(0.6) and c.fvu_end == pytest.approx(0.5)
    with pytest.raises(ValueError, match="too coarse"):
        convergence(*_log(4, 250, lambda s: 1.0))
