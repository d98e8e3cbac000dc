"""The HTML report (one self-contained file: figures embedded as base64 PNG) and the short
text summary printed at the end of the aggregate step.

Why self-contained: the report is what gets mailed around or opened from a cluster's shared
filesystem through a browser; relative image paths break as soon as the file moves.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import html
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import duckdb

from randsae.results.display import VARIANT_ORDER_MACRO
from randsae.results.query import connect_readonly, format_cell, to_table
from randsae.sae.convergence import CONVERGED_BELOW, LAST_FRACTION

#: Per-SAE columns of the report's metrics table and the summary: (metric, short header).
KEY_METRICS: tuple[tuple[str, str], ...] = (
    ("explained_variance", "EV"),
    ("cossim", "cos"),
    ("l0", "L0"),
    ("l1", "L1"),
    ("ce_loss_score", "CE score"),
    ("auroc_detection", "AUROC det"),
    ("auroc_fuzzing", "AUROC fuzz"),
    ("auroc_lexical", "AUROC lex"),
    ("token_entropy_mean", "entropy"),
)
SUMMARY_MAX_ROWS = 40
#: The figure name render_report shows in its Training section rather than under Figures.
TRAINING_FIGURE = "fig_training"

Db = str | os.PathLike[str] | duckdb.DuckDBPyConnection


@contextlib.contextmanager
def _connection(db: Db) -> Iterator[duckdb.DuckDBPyConnection]:
    if isinstance(db, duckdb.DuckDBPyConnection):
        yield db
    else:
        with connect_readonly(db) as con:
            yield con


def _fetch(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
    rel = con.execute(sql, list(params))
    cols = [d[0] for d in rel.description or []]
    return cols, rel.fetchall()


def metrics_by_variant_sql() -> str:
    pivots = ",\n       ".join(
        f"avg(value) FILTER (WHERE metric = '{m}') AS \"{header}\"" for m, header in KEY_METRICS
    )
    return f"""
SELECT model, layer, 'x' || expansion || '-k' || k AS setting, variant, count(DISTINCT seed) AS seeds,
       {pivots}
FROM sae_metric_values
GROUP BY model, layer, expansion, k, variant
ORDER BY model, layer, expansion, k, {VARIANT_ORDER_MACRO}(variant), variant"""


DISCRIMINABILITY_SQL = """
SELECT model, layer, 'x' || expansion || '-k' || k AS setting, level, metric, variant,
       n_trained, n_variant, trained_value, variant_value, difference, difference_lo, difference_hi,
       effect_size, p_value, auroc, auroc_lo, auroc_hi, separated, note
FROM discriminability ORDER BY model, layer, expansion, k, level, metric, variant_order(variant), variant"""

HEADLINE_SQL = "SELECT * FROM headline"

FINDINGS_SQL = """
SELECT claim, paper, statistic, rule, value, ci_lo, ci_hi, n, verdict, note FROM findings"""

USAGE_SQL = """
SELECT artifact_stage, client, llm_model, count(*) AS calls, count(*) FILTER (WHERE cached) AS cached_calls,
       sum(input_tokens) AS input_tokens, sum(cache_read_tokens) AS cache_read_tokens,
       sum(cache_write_tokens) AS cache_write_tokens, sum(output_tokens) AS output_tokens, sum(cost_usd) AS cost_usd
FROM llm_usage GROUP BY ALL ORDER BY ALL"""

JUDGES_SQL = "SELECT DISTINCT scorer, client, llm_model FROM scores WHERE scorer IS NOT NULL ORDER BY ALL"
#: Judges whose numbers only show that the pipeline runs (docs/autointerp.md, "Choosing the
#: judge"): the packaged SmolLM2-135M, matched by name (``llm_model`` starts with it).
PLUMBING_JUDGES: tuple[str, ...] = ("smollm2",)


def judge_label(scorer: str, client: str | None, model: str | None) -> str:
    """How the report names who produced a scorer's AUROCs; a SmolLM2 judge is labelled a
    plumbing check, the lexical scorer a token-identity baseline."""
    if client == "none":
        return f"{scorer}: no LLM, word/token overlap with the explanation (a token-identity baseline)"
    name = f"{scorer}: judged by {model} ({client})"
    if (model or "").lower().startswith(PLUMBING_JUDGES):
        return f"{name}: a plumbing check, not a result (this judge scores close to chance)"
    return name


EXPLANATIONS_SQL = """
SELECT model, variant, count(*) AS latents, count(*) FILTER (WHERE ok) AS ok,
       count(*) FILTER (WHERE NOT ok) AS failed, sum(cost_usd) AS cost_usd
FROM explanations GROUP BY ALL ORDER BY ALL"""


# -------------------------------------------------------------------------- training


class ConvergenceSummary(NamedTuple):
    """The ``convergence`` table in a few numbers (SAEs named by their tag)."""

    n: int  # SAEs with a training log
    n_converged: int
    largest: tuple[str, float] | None  # (tag, improvement) of the largest finite improvement
    unconverged: list[tuple[str, float]]  # (tag, improvement), largest improvement first
    unjudged: list[str]  # tags of logs too coarse for the statistic (converged NULL)

    @property
    def n_judged(self) -> int:
        return self.n - len(self.unjudged)


CONVERGENCE_SQL = f"""
SELECT s.tag, c.improvement, c.converged
FROM convergence AS c JOIN saes AS s USING (sae_key)
ORDER BY c.model, c.layer, c.expansion, c.k, {VARIANT_ORDER_MACRO}(c.variant), c.variant, c.seed"""

#: The most SAEs a sentence names one by one.
NAMED_MAX = 8


def convergence_summary(con: duckdb.DuckDBPyConnection) -> ConvergenceSummary:
    rows = con.sql(CONVERGENCE_SQL).fetchall()
    finite = [(tag, float(x)) for tag, x, _ in rows if x is not None and math.isfinite(x)]
    largest = max(finite, key=lambda r: r[1]) if finite else None
    unconverged = sorted(((tag, float(x)) for tag, x, ok in rows if ok is False),
                         key=lambda r: (not math.isfinite(r[1]), -r[1]))  # a NaN gain (diverged) last
    return ConvergenceSummary(n=len(rows), n_converged=sum(ok is True for *_, ok in rows), largest=largest,
                              unconverged=unconverged, unjudged=[tag for tag, _, ok in rows if ok is None])


def _named(tags: Sequence[str]) -> str:
    shown = ", ".join(tags[:NAMED_MAX])
    return shown + (f" and {len(tags) - NAMED_MAX} more" if len(tags) > NAMED_MAX else "")


def convergence_sentence(summary: ConvergenceSummary) -> str:
    """How many SAEs converged, the largest gain and which SAE; which did not, and the setting to raise."""
    if not summary.n:
        return "No training logs yet."
    rule = (f"their last {LAST_FRACTION:.0%} of training steps improved training FVU by less than "
            f"{CONVERGED_BELOW:g}")
    parts = []
    if summary.n_judged:
        text = f"{summary.n_converged} of {summary.n_judged} SAEs converged ({rule})"
        if summary.largest:
            text += f"; the largest improvement is {summary.largest[1]:.4f} ({summary.largest[0]})"
        parts.append(text + ".")
    if summary.unconverged:
        parts.append(f"Not converged: {_named([f'{t} ({x:+.4f})' for t, x in summary.unconverged])}; raise "
                     "`sae.max_tokens` (more passes over the cached training split) until they converge.")
    if summary.unjudged:
        parts.append(f"{len(summary.unjudged)} of {summary.n} SAEs have a training log too coarse to judge "
                     f"({_named(summary.unjudged)}): log more often (`sae.log_every_steps`) or train longer.")
    return " ".join(parts)


# ------------------------------------------------------------------------------ HTML

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; font-size: 12px; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #f0f0f0; position: sticky; top: 0; }
td.text { text-align: left; }
tr.separated td { background: #fde8e8; }
.scroll { max-height: 600px; overflow: auto; }
figure { margin: 1em 0; } figcaption { font-size: 13px; color: #555; }
img { max-width: 100%; border: 1px solid #eee; }
.empty { color: #777; font-style: italic; }
"""


def _html_table(cols: list[str], rows: list[tuple[Any, ...]], *, highlight: str | None = None, scroll: bool = False) -> str:
    if not rows:
        return '<p class="empty">no rows yet</p>'
    hi = cols.index(highlight) if highlight in cols else None
    out = ["<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr></thead><tbody>"]
    for r in rows:
        cls = ' class="separated"' if hi is not None and r[hi] is True else ""
        cells = []
        for v in r:
            text = html.escape(format_cell(v, width=200))
            kind = "" if isinstance(v, int | float) and not isinstance(v, bool) else ' class="text"'
            cells.append(f"<td{kind}>{text}</td>")
        out.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    body = "\n".join(out)
    return f'<div class="scroll">{body}</div>' if scroll else body


def _code(text: str) -> str:
    """Escaped text with its `backticked` names as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _img(path: Path, caption: str) -> str:
    if not path.is_file():
        return f'<p class="empty">figure {html.escape(path.name)} missing</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(path.name)}" data-file="{html.escape(path.name)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)} '
            f"({html.escape(path.name)})</figcaption></figure>")


def render_report(db: Db, out: str | os.PathLike[str], figures: Mapping[str, Path] | None = None,
                  captions: Mapping[str, str] | None = None) -> Path:
    """Write the HTML report to ``out`` (atomically) and return its path."""
    figures = dict(figures or {})
    captions = dict(captions or {})
    training_fig = figures.pop(TRAINING_FIGURE, None)
    with _connection(db) as con:
        runs = con.sql("SELECT built_at, code_version, store_root, seed, n_boot, n_perm, alpha FROM runs").fetchall()
        progress = _fetch(con, "SELECT stage, version, planned, built FROM progress ORDER BY stage_order")
        metrics = _fetch(con, metrics_by_variant_sql())
        disc = _fetch(con, DISCRIMINABILITY_SQL)
        headline = _fetch(con, HEADLINE_SQL)
        found = _fetch(con, FINDINGS_SQL)
        usage = _fetch(con, USAGE_SQL)
        expl = _fetch(con, EXPLANATIONS_SQL)
        judges = [judge_label(*r) for r in con.sql(JUDGES_SQL).fetchall()]
        total = con.execute("SELECT count(*), coalesce(sum(cost_usd), 0), count(*) FILTER (WHERE cached) FROM llm_usage").fetchall()[0]
        n_sep = con.execute("SELECT count(*) FILTER (WHERE separated), count(*) FROM discriminability").fetchall()[0]
        training = convergence_sentence(convergence_summary(con))
    built_at, code, root, seed, n_boot, n_perm, alpha = runs[0] if runs else (None,) * 7
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>randsae results</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>randsae: trained vs randomized transformers</h1>",
        f"<p>Built {html.escape(format_cell(built_at))} UTC by randsae {html.escape(str(code))} from the store at "
        f"<code>{html.escape(str(root))}</code>. Resampling: seed {seed}, {n_boot} bootstrap resamples, "
        f"{n_perm} permutations, alpha {alpha}. Generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC.</p>",
        "<h2>Headline</h2>",
        "<p>One row per metric, one column per random variant: the effect (variant - trained, mean over "
        "models, layers and SAE settings) with its 95% CI; <b>*</b> where the metric separates trained from "
        "the variant in every cell compared, k/n where in k of n. The full table is under Discriminability; "
        "see docs/results.md for the method.</p>",
        _html_table(*headline, scroll=True),
        "<h2>Findings: the paper's claims tested on this run</h2>",
        "<p>Each claim's statistic computed from this run's data, with a 95% bootstrap CI; the verdict "
        "follows from the CI by the stated rule (never written by hand). See docs/results.md.</p>",
        _html_table(*found),
        "<h2>Training</h2>",
        f"<p>{_code(training)} Table <code>convergence</code>; the curves are in <code>train_log</code> "
        "(docs/results.md).</p>",
        *([_img(training_fig, captions.get(TRAINING_FIGURE, TRAINING_FIGURE))] if training_fig else []),
        "<h2>Progress</h2>", _html_table(*progress),
        "<h2>Figures</h2>",
        *[_img(p, captions.get(name, name)) for name, p in figures.items()],
        "<h2>Per-SAE metrics by variant</h2>",
        "<p>Mean over seeds. AUROCs are pooled over each SAE's scored latents (own explanations); "
        "entropy is the mean token entropy of the sampled latents.</p>",
        *(["<p>Who judged: " + "; ".join(html.escape(j) for j in judges) + ".</p>"] if judges else []),
        _html_table(*metrics, scroll=True),
        "<h2>Discriminability</h2>",
        f"<p>{n_sep[0] if n_sep else 0} of {n_sep[1] if n_sep else 0} comparisons separate trained from the variant "
        "(highlighted: p below alpha, difference CI excludes 0 and, per latent, AUROC CI excludes 0.5). "
        "Per-SAE metrics have one sample per seed; with one seed per side there is no CI or p-value. "
        "See docs/results.md for the method.</p>",
        _html_table(*disc, highlight="separated", scroll=True),
        "<h2>LLM usage and cost</h2>",
        f"<p>{total[0] if total else 0} calls ({total[2] if total else 0} served from the response cache), "
        f"total cost ${(total[1] if total else 0):.4f}.</p>",
        _html_table(*usage),
        "<h3>Explanations</h3>", _html_table(*expl),
        "</body></html>",
    ]
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- terminal


def summary_table(db: Db) -> str:
    """A short text summary: key metrics per model, layer and variant, the discriminability
    count and the LLM cost."""
    with _connection(db) as con:
        cols, rows = _fetch(con, metrics_by_variant_sql())
        n_sep = con.execute("SELECT count(*) FILTER (WHERE separated), count(*), count(*) FILTER (WHERE separated IS NULL) "
                        "FROM discriminability").fetchall()[0]
        top = con.sql("SELECT metric, variant, model, layer, auroc, p_value FROM discriminability "
                      "WHERE separated AND level = 'latent' ORDER BY abs(auroc - 0.5) DESC LIMIT 5").fetchall()
        calls, cost = con.execute("SELECT count(*), coalesce(sum(cost_usd), 0) FROM llm_usage").fetchall()[0]
        found = con.sql("SELECT id, verdict, value, ci_lo, ci_hi FROM findings").fetchall()
        training = convergence_sentence(convergence_summary(con))
    lines = ["SAE metrics (mean over seeds)"]
    if rows:
        shown = rows[:SUMMARY_MAX_ROWS]
        lines.append(to_table(cols, shown, total=len(rows)).rstrip())
    else:
        lines.append("  no SAE metrics yet")
    if n_sep and n_sep[1]:
        lines.append(f"Discriminability: {n_sep[0]} of {n_sep[1]} comparisons separate trained from a variant "
                     f"({n_sep[2]} undefined: one sample per side)")
        for metric, variant, model, layer, auroc, p in top:
            lines.append(f"  {metric} vs {variant}: {model} layer {layer}, AUROC {format_cell(auroc)}, p {format_cell(p)}")
    else:
        lines.append("Discriminability: no comparisons yet")
    lines.append("Findings (the paper's claims on this run; docs/results.md)")
    for claim, verdict, value, lo, hi in found:
        lines.append(f"  {claim}: {verdict} ({format_cell(value)} [{format_cell(lo)}, {format_cell(hi)}])")
    lines.append(f"Training: {training}")
    lines.append(f"LLM usage: {calls} calls, ${float(cost):.4f}")
    return "\n".join(lines) + "\n"
