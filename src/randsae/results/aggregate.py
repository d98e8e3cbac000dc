"""The aggregate step: database, figures, report, terminal summary.

``expected_outputs`` names every file without reading the store, so a Snakemake rule can
declare them as outputs; ``aggregate`` produces exactly those files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from randsae.config import as_list, normalise
from randsae.results.db import DB_NAME, build_database
from randsae.results.figures import (
    discriminability_figure,
    metrics_figure,
    roc_figure,
    training_figure,
)
from randsae.results.query import connect_readonly
from randsae.results.report import render_report, summary_table
from randsae.store import Store

REPORT_NAME = "report.html"
FIGURES_DIR = "figures"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def expected_outputs(cfg: Mapping[str, Any], results_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """{output name: path} of everything ``aggregate`` writes for this config."""
    cfg = normalise(cfg)
    root = Path(results_dir)
    fig = root / FIGURES_DIR
    out = {"db": root / DB_NAME, "report": root / REPORT_NAME}
    for model in cfg["models"]:
        for scorer in cfg["autointerp"]["scorers"]:
            out[f"fig_roc_{model}_{scorer}"] = fig / f"fig1_roc_{_safe(model)}_{scorer}.png"
    out["fig_metrics"] = fig / "fig2_metrics.png"
    out["fig_discriminability"] = fig / "fig3_discriminability.png"
    out["fig_training"] = fig / "fig_training.png"
    return out


def _captions(paths: Mapping[str, Path]) -> dict[str, str]:
    caps = {
        "fig_metrics": "Figure 2: SAE metrics by layer; one line per variant, one column per model",
        "fig_discriminability": "Discriminability: how well each metric separates trained from each variant",
        "fig_training": "Training FVU by step, one line per SAE; shaded: the last 20% of steps the convergence statistic reads",
    }
    for name in paths:
        if name.startswith("fig_roc_"):
            caps[name] = f"Figure 1: ROC curves per layer, one curve per variant ({name.removeprefix('fig_roc_')})"
    return caps


def aggregate(cfg: Mapping[str, Any], store: Store | str | os.PathLike[str], results_dir: str | os.PathLike[str], *,
              n_boot: int = 1000, n_perm: int = 1000, alpha: float = 0.01, echo: bool = True) -> dict[str, Path]:
    """Build results.duckdb, the figures and report.html under ``results_dir``; print the
    summary (``echo``); return ``expected_outputs``. The figures show the config's first SAE
    setting (first expansion, first k)."""
    cfg = normalise(cfg)
    paths = expected_outputs(cfg, results_dir)
    build_database(cfg, store, paths["db"], n_boot=n_boot, n_perm=n_perm, alpha=alpha)
    setting = (as_list(cfg["sae"]["expansion"])[0], as_list(cfg["sae"]["k"])[0])
    figures = {}
    with connect_readonly(paths["db"]) as con:
        for model in cfg["models"]:
            for scorer in cfg["autointerp"]["scorers"]:
                name = f"fig_roc_{model}_{scorer}"
                figures[name] = roc_figure(con, paths[name], model, scorer, setting=setting)
        figures["fig_metrics"] = metrics_figure(con, paths["fig_metrics"], setting=setting)
        figures["fig_discriminability"] = discriminability_figure(con, paths["fig_discriminability"], setting=setting)
        figures["fig_training"] = training_figure(con, paths["fig_training"])  # every SAE, not one setting
        render_report(con, paths["report"], figures=figures, captions=_captions(figures))
        summary = summary_table(con)
    if echo:
        print(summary, end="")
    return paths
