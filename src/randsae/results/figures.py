"""The paper's figures, drawn from results.duckdb (PNG, matplotlib's Agg renderer).

- ``roc_figure`` (paper Fig. 1): ROC curves of one scorer, one panel per layer of a model, one
  curve per variant; examples pooled over the SAE seeds of one setting.
- ``metrics_figure`` (paper Fig. 2): rows explained variance, cosine similarity, L1, the AUROC
  of each scorer the run used, CE loss score, mean token entropy of sampled latents; x = layer, one
  line per variant (mean over seeds, bars from min to max), one column per model.
- ``discriminability_figure``: per model, metric x variant heatmaps of the discriminability
  table (per-latent metrics: AUROC; per-SAE metrics: relative difference), averaged over layers,
  each cell annotated with how many layers separate.
- ``training_figure``: training FVU against step from ``train_log``, one panel per (model,
  layer), one line per SAE coloured by variant, the last 20% of steps shaded, the title the
  ``convergence`` table's count.

Figures use the object API (``matplotlib.figure.Figure``), never pyplot, so no global backend
state is touched and nothing needs a display. A panel without data says "no data"; a figure
is always written.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FormatStrFormatter, FuncFormatter
from sklearn.metrics import roc_curve

from randsae.enums import SCORERS
from randsae.results.display import sort_variants, variant_color
from randsae.results.report import convergence_summary
from randsae.sae.convergence import CONVERGED_BELOW, LAST_FRACTION

DPI = 110

#: Figure 2 rows: (metric in sae_metric_values, axis label).
METRIC_ROWS: tuple[tuple[str, str], ...] = (
    ("explained_variance", "explained variance"),
    ("cossim", "cosine similarity"),
    ("l1", "L1"),
    *((f"auroc_{scorer}", f"AUROC {scorer}") for scorer in SCORERS),  # rows without data are left out
    ("ce_loss_score", "CE loss score"),
    ("token_entropy_mean", "token entropy (nats)"),
)

#: Per-SAE metrics shown in the discriminability heatmap (all of them are in the table).
HEATMAP_SAE_METRICS: tuple[str, ...] = (
    "explained_variance", "cossim", "l0", "l1", "l2_ratio", "frac_alive", "ce_loss_score", "delta_ce",
    "kl_score", "auroc_detection", "auroc_fuzzing", "auroc_detection_control", "auroc_fuzzing_control",
    "token_entropy_mean", "token_lookup_share_mean",
)

Setting = tuple[int, int]


def _two_five(value: float, _pos: object) -> str:
    """Minor-tick labels of a log axis at 2 and 5 times a power of ten only (all eight collide)."""
    if value <= 0:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value))
    return f"{value:.2g}" if round(mantissa, 6) in (2.0, 5.0) else ""


def no_data(ax: Axes, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4", fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig: Figure, out: str | os.PathLike[str]) -> Path:
    """Write to a temporary sibling and rename: a reader never sees half a PNG."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, dpi=DPI, format="png", bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = max(1, min(max_cols, n))
    return (math.ceil(max(n, 1) / cols), cols)


def models(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.sql("SELECT DISTINCT model FROM saes ORDER BY model").fetchall()]


def default_setting(con: duckdb.DuckDBPyConnection, model: str | None = None) -> Setting | None:
    """The (expansion, k) with the most SAEs (of ``model``), ties to the smallest."""
    where = "WHERE model = ?" if model is not None else ""
    rows = con.execute(
        f"SELECT expansion, k FROM saes {where} GROUP BY expansion, k ORDER BY count(*) DESC, expansion, k LIMIT 1",
        [model] if model is not None else [],
    ).fetchall()
    return (int(rows[0][0]), int(rows[0][1])) if rows else None


# ---------------------------------------------------------------------------- Figure 1


def roc_figure(con: duckdb.DuckDBPyConnection, out: str | os.PathLike[str], model: str, scorer: str, *,
               explanation_source: str = "own", setting: Setting | None = None) -> Path:
    """ROC curves of ``scorer`` for every layer of ``model`` (paper Fig. 1)."""
    setting = setting or default_setting(con, model)
    layers = [r[0] for r in con.execute("SELECT DISTINCT layer FROM saes WHERE model = ? ORDER BY layer", [model]).fetchall()]
    rows, cols = _grid(len(layers))
    fig = Figure(figsize=(3.6 * cols, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    if not layers:
        no_data(axes[0, 0])
    for ax in axes.flat[max(1, len(layers)):]:
        ax.set_axis_off()
    for ax, layer in zip(axes.flat, layers, strict=False):
        d = con.execute(
            "SELECT variant, activating, probability FROM scores WHERE model = ? AND layer = ? AND scorer = ? "
            "AND explanation_source = ? AND expansion = ? AND k = ? AND coalesce(ok, true) "
            "AND probability IS NOT NULL AND isfinite(probability) AND activating IS NOT NULL",
            [model, layer, scorer, explanation_source, *(setting or (-1, -1))],
        ).fetchnumpy()
        variant = np.asarray(d["variant"], dtype=str)
        y = np.asarray(d["activating"], dtype=bool)
        p = np.asarray(d["probability"], dtype=np.float64)
        drawn = 0
        for v in sort_variants(str(x) for x in variant):
            sel = variant == v
            if y[sel].all() or not y[sel].any():
                continue
            fpr, tpr, _ = roc_curve(y[sel], p[sel])
            auc = float(np.trapezoid(tpr, fpr))
            ax.plot(fpr, tpr, color=variant_color(v), label=f"{v} ({auc:.2f})", lw=1.6)
            drawn += 1
        ax.set_title(f"layer {layer}", fontsize=10)
        if not drawn:
            no_data(ax)
            continue
        ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=7, loc="lower right", title="variant (AUROC)", title_fontsize=7)
    where = f"x{setting[0]}-k{setting[1]}, " if setting else ""
    fig.suptitle(f"{model}: {scorer} ROC ({explanation_source} explanations, {where}pooled over seeds)", fontsize=11)
    return _save(fig, out)


# ---------------------------------------------------------------------------- Figure 2


def _metric_lines(con: duckdb.DuckDBPyConnection, model: str, metric: str, setting: Setting | None) -> dict[str, np.ndarray]:
    """variant -> array [n_layers, 4] of (layer, mean, min, max) over seeds."""
    rows = con.execute(
        "SELECT variant, layer, avg(value), min(value), max(value) FROM sae_metric_values "
        "WHERE model = ? AND metric = ? AND expansion = ? AND k = ? GROUP BY variant, layer ORDER BY variant, layer",
        [model, metric, *(setting or (-1, -1))],
    ).fetchall()
    out: dict[str, list[tuple[float, ...]]] = {}
    for variant, layer, mean, lo, hi in rows:
        out.setdefault(variant, []).append((layer, mean, lo, hi))
    return {v: np.asarray(pts, dtype=np.float64) for v, pts in out.items()}


def metrics_figure(con: duckdb.DuckDBPyConnection, out: str | os.PathLike[str], *, setting: Setting | None = None) -> Path:
    """Paper Fig. 2: metric rows x model columns, x = layer, one line per variant."""
    names = models(con) or ["(no models)"]
    # a scorer the run did not use would be a row of empty panels: show only rows with data
    rows = [(m, label) for m, label in METRIC_ROWS if not m.startswith("auroc_")
            or con.execute("SELECT count(*) FROM sae_metric_values WHERE metric = ?", [m]).fetchone()[0]]  # type: ignore[index]
    fig = Figure(figsize=(3.8 * len(names), 2.0 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(names), squeeze=False)
    for j, model in enumerate(names):
        s = setting or default_setting(con, model)
        for i, (metric, label) in enumerate(rows):
            ax = axes[i, j]
            lines = _metric_lines(con, model, metric, s)
            if i == 0:
                ax.set_title(f"{model}" + (f" (x{s[0]}-k{s[1]})" if s else ""), fontsize=10)
            if j == 0:
                ax.set_ylabel(label, fontsize=9)
            if not lines:
                no_data(ax)
                continue
            for v in sort_variants(lines):
                pts = lines[v]
                err = np.vstack([pts[:, 1] - pts[:, 2], pts[:, 3] - pts[:, 1]])
                ax.errorbar(pts[:, 0], pts[:, 1], yerr=err if np.any(err > 0) else None, color=variant_color(v),
                            marker="o", ms=3, lw=1.4, capsize=2, label=v)
            ax.set_xticks(sorted({int(x) for pts in lines.values() for x in pts[:, 0]}))
            if i == len(rows) - 1:
                ax.set_xlabel("layer")
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.suptitle("SAE metrics by layer and variant (mean over seeds; bars: min to max)", fontsize=11)
    return _save(fig, out)


# ------------------------------------------------------------------ discriminability


def _heat(ax: Axes, metrics: list[str], variants: list[str], value: np.ndarray, note: list[list[str]],
          cmap: str, vmin: float, vmax: float, title: str) -> Any:
    masked = np.ma.masked_invalid(value)
    im = ax.imshow(masked, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(metrics)), metrics, fontsize=8)
    for i in range(len(metrics)):
        for j in range(len(variants)):
            strong = math.isfinite(value[i, j]) and abs((value[i, j] - vmin) / (vmax - vmin) - 0.5) > 0.3
            ax.text(j, i, note[i][j], ha="center", va="center", fontsize=7, color="white" if strong else "black")
    ax.set_title(title, fontsize=9)
    return im


def discriminability_figure(con: duckdb.DuckDBPyConnection, out: str | os.PathLike[str], *,
                            setting: Setting | None = None) -> Path:
    """Heatmaps per model: rows metrics, columns random variants, averaged over layers.
    Per-latent metrics are coloured by AUROC (0.5 = indistinguishable); per-SAE metrics by the
    relative difference (variant - trained) / |trained|, clipped to [-1, 1]. A cell's text is
    the value and "separated in s of n layers"."""
    names = [r[0] for r in con.sql("SELECT DISTINCT model FROM discriminability ORDER BY model").fetchall()]
    panels = [("latent", "per-latent metrics: AUROC trained vs variant", "RdBu_r", 0.0, 1.0),
              ("sae", "per-SAE metrics: (variant - trained) / |trained|", "PuOr", -1.0, 1.0)]
    if not names:
        fig = Figure(figsize=(6, 3), layout="constrained")
        no_data(fig.subplots(), "no discriminability rows yet")
        return _save(fig, out)
    height = max(3.5, 0.3 * len(HEATMAP_SAE_METRICS) + 1.5)
    fig = Figure(figsize=(13, height * len(names)), layout="constrained")
    axes = fig.subplots(len(names), 2, squeeze=False)
    for r, model in enumerate(names):
        s = setting or default_setting(con, model)
        for c, (level, title, cmap, vmin, vmax) in enumerate(panels):
            ax = axes[r, c]
            value_sql = "avg(auroc)" if level == "latent" else (
                "avg(greatest(-1, least(1, difference / nullif(abs(trained_value), 0))))")
            rows = con.execute(
                f"SELECT metric, variant, {value_sql}, count(*) FILTER (WHERE separated), count(*) "
                "FROM discriminability WHERE model = ? AND level = ? AND expansion = ? AND k = ? "
                "GROUP BY metric, variant ORDER BY metric",
                [model, level, *(s or (-1, -1))],
            ).fetchall()
            if level == "sae":
                order = {m: i for i, m in enumerate(HEATMAP_SAE_METRICS)}
                rows = sorted((r for r in rows if r[0] in order), key=lambda r: order[r[0]])
            if not rows:
                ax.set_title(f"{model}: {title}", fontsize=9)
                no_data(ax)
                continue
            metrics = list(dict.fromkeys(m for m, *_ in rows))
            variants = sort_variants(v for _, v, *_ in rows)
            value = np.full((len(metrics), len(variants)), np.nan)
            note = [["" for _ in variants] for _ in metrics]
            for m, v, val, sep, n in rows:
                i, j = metrics.index(m), variants.index(v)
                value[i, j] = np.nan if val is None else val
                note[i][j] = ("n/a" if val is None or not math.isfinite(val) else f"{val:.2f}") + f"\n{sep}/{n}"
            im = _heat(ax, metrics, variants, value, note, cmap, vmin, vmax, f"{model}: {title}")
            fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle("Discriminability, mean over layers (cell text: value, layers separated / layers compared)", fontsize=10)
    return _save(fig, out)


# ------------------------------------------------------------------------------ training

#: Line styles of the SAE settings (expansion, k) within a panel, in setting order.
SETTING_STYLES: tuple[str, ...] = ("-", "--", ":", "-.")


def training_figure(con: duckdb.DuckDBPyConnection, out: str | os.PathLike[str]) -> Path:
    """Training FVU against step for every SAE with a training log: one panel per (model,
    layer), one line per SAE coloured by variant (its seeds alike; settings by line style), the
    last ``LAST_FRACTION`` of each run's steps shaded from its 80% mark, an x at the end of each
    SAE the ``convergence`` table calls not converged; the title gives the convergence count."""
    logs = con.sql(
        "SELECT l.model, l.layer, l.sae_key, l.variant, l.expansion, l.k, list(l.step ORDER BY l.step), "
        "list(l.fvu ORDER BY l.step), any_value(c.converged) FROM train_log AS l "
        "LEFT JOIN convergence AS c USING (sae_key) GROUP BY ALL ORDER BY l.model, l.layer, l.sae_key"
    ).fetchall()
    panels: dict[tuple[str, int], list[tuple[Any, ...]]] = {}
    for row in logs:
        panels.setdefault((row[0], int(row[1])), []).append(row[2:])
    if not panels:
        fig = Figure(figsize=(6, 3), layout="constrained")
        no_data(fig.subplots(), "no training logs yet")
        return _save(fig, out)
    settings = sorted({(int(r[4]), int(r[5])) for r in logs})  # line styles: the same in every panel
    rows, cols = _grid(len(panels), max_cols=3)
    fig = Figure(figsize=(4.2 * cols, 3.3 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_axis_off()
    for ax, ((model, layer), saes) in zip(axes.flat, panels.items(), strict=False):
        lasts = sorted({int(steps[-1]) for *_, steps, _, _ in saes})
        for last in lasts:  # the span the statistic reads: its 80% mark to the end
            ax.axvspan(last * (1 - LAST_FRACTION), last, color="0.5", alpha=0.08, lw=0)
            ax.axvline(last * (1 - LAST_FRACTION), color="0.4", ls="--", lw=0.8)
        fvu_all: list[float] = []
        for _, variant, e, k, steps, fvu, converged in saes:
            y = np.asarray([np.nan if f is None else f for f in fvu], dtype=np.float64)
            fvu_all += [float(f) for f in y if math.isfinite(f)]
            style = SETTING_STYLES[settings.index((int(e), int(k))) % len(SETTING_STYLES)]
            ax.plot(steps, y, color=variant_color(variant), ls=style, lw=1.1, alpha=0.85)
            if converged is False:
                ax.plot(steps[-1:], y[-1:], marker="x", ms=7, mew=1.8, color=variant_color(variant), ls="none")
        if fvu_all and min(fvu_all) > 0:
            ax.set_yscale("log")  # the tail is what matters: early FVU would squash it on a linear axis
            ax.yaxis.set_major_formatter(FormatStrFormatter("%.2g"))  # 0.3, not 3 x 10^-1
            ax.yaxis.set_minor_formatter(FuncFormatter(_two_five))
        n_conv = sum(c is True for *_, c in saes)
        ax.set_title(f"{model} layer {layer}: {n_conv}/{len(saes)} converged", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("training FVU")
    # one legend for the figure, outside the panels: inside, it would hide some panel's curve ends
    variants = sort_variants(str(r[3]) for r in logs)
    handles = [Line2D([], [], color=variant_color(v), label=v) for v in variants]
    if len(settings) > 1:
        handles += [Line2D([], [], color="0.3", ls=SETTING_STYLES[i % len(SETTING_STYLES)], label=f"x{e}-k{k}")
                    for i, (e, k) in enumerate(settings)]
    handles.append(Line2D([], [], color="0.4", ls="--", lw=0.8, label=f"{1 - LAST_FRACTION:.0%} of steps"))
    if any(r[-1] is False for r in logs):
        handles.append(Line2D([], [], marker="x", color="0.3", ls="none", label="not converged"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize=8)
    summary = convergence_summary(con)
    title = (f"Training FVU by step: {summary.n_converged} of {summary.n_judged} SAEs converged "
             f"(last {LAST_FRACTION:.0%} of steps gained < {CONVERGED_BELOW:g} FVU)")
    if summary.largest:
        title += f", largest gain {summary.largest[1]:.4f} ({summary.largest[0]})"
    if summary.unjudged:
        title += f"; {len(summary.unjudged)} logs too coarse to judge"
    fig.suptitle(title, fontsize=10)
    return _save(fig, out)
