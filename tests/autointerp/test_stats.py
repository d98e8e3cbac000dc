from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, precision_score, recall_score, roc_auc_score

from randsae.autointerp.stats import auroc, binary_metrics, bootstrap_auroc_ci, summarize


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_threshold_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 150
    y = rng.random(n) < 0.6
    # rounded scores -> many ties, which is where AUROC implementations disagree
    p = np.round(np.clip(0.5 * y + rng.normal(0.25, 0.3, n), 0, 1), 1)
    assert auroc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    m = binary_metrics(y, p)
    pred = p > 0.5
    assert m.balanced_accuracy == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert m.precision == pytest.approx(precision_score(y, pred, zero_division=np.nan), abs=1e-12)
    assert m.recall == pytest.approx(recall_score(y, pred), abs=1e-12)


def test_degenerate_inputs_are_nan() -> None:
    assert math.isnan(auroc([True, True], [0.1, 0.9]))
    assert math.isnan(binary_metrics([True], [0.1]).tnr)
    assert bootstrap_auroc_ci([True, True], [0.1, 0.2]) == (pytest.approx(math.nan, nan_ok=True),) * 2


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.5
    p = np.clip(0.3 * y + rng.random(300) * 0.7, 0, 1)
    a = auroc(y, p)
    lo, hi = bootstrap_auroc_ci(y, p, n_boot=500, seed=1)
    assert lo < a < hi
    assert (lo, hi) == bootstrap_auroc_ci(y, p, n_boot=500, seed=1)
    groups = np.repeat(np.arange(30), 10)
    glo, ghi = bootstrap_auroc_ci(y, p, groups=groups, n_boot=300, seed=1)
    assert glo < a < ghi


def test_summarize_counts_failed_examples() -> None:
    s = summarize([True, False, True, False], [0.9, 0.2, None, 0.6], n_boot=50)
    assert s.n == 3 and s.n_failed == 1 and s.n_pos == 1 and s.n_neg == 2
    assert s.auroc == 1.0 and s.balanced_accuracy == pytest.approx(0.75)
