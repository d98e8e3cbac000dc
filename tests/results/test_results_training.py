"""The training tables (train_log, convergence), the training figure and the report's Training
section, from the synthetic store's training logs (written through the trainer's writer)."""

from __future__ import annotations

import re

import duckdb
import pyarrow.parquet as pq
import pytest
from results_synth import LOG_EVERY, TRAIN_STEPS, UNCONVERGED, build_synthetic_store, synth_config

from randsae.plan import build_plan
from randsae.results.db import build_database
from randsae.results.figures import training_figure
from randsae.results.layout import sae_units
from randsae.results.report import (
    ConvergenceSummary,
    convergence_sentence,
    convergence_summary,
    render_report,
)
from randsae.results.schemas import TRAIN_LOG
from randsae.sae.convergence import convergence
from randsae.sae.train_log import LOG_FILE, SCHEMA

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_ROWS = len([*range(LOG_EVERY, TRAIN_STEPS, LOG_EVERY)]) + 1  # plus the partial last row


def _unconverged_tag() -> str:
    variant, layer, seed = UNCONVERGED
    return f"tiny/{variant}/L{layer}/x2-k4/s{seed}"


def test_train_log_table_holds_every_row_with_the_trainers_types(synth):
    units = sae_units(build_plan(synth["cfg"]))
    with duckdb.connect(str(synth["db"]), read_only=True) as con:
        types = {c: t for c, t, *_ in con.sql("DESCRIBE train_log").fetchall()}
        assert con.sql("SELECT count(*) FROM train_log").fetchall()[0][0] == len(units) * N_ROWS
        u = next(u for u in units if u.variant == "rerandomized" and u.layer == 1 and u.seed == 0)
        got = con.execute("SELECT model, variant, layer, expansion, k, seed, step, fvu FROM train_log "
                          "WHERE sae_key = ? ORDER BY step", [u.sae.key]).fetchall()
    assert list(types) == ["sae_key", "model", "variant", "layer", "expansion", "k", "seed", *SCHEMA.names]
    assert {c: types[c] for c in SCHEMA.names} == TRAIN_LOG == {
        "step": "BIGINT", "tokens": "BIGINT", "loss": "DOUBLE", "fvu": "DOUBLE", "auxk_loss": "DOUBLE",
        "dead_fraction": "DOUBLE", "l0": "DOUBLE", "lr": "DOUBLE"}
    # identifiers from the plan, values from the SAE artifact's own file
    log = pq.read_table(synth["store"].path("sae", u.sae.key) / LOG_FILE).to_pydict()
    assert {r[:6] for r in got} == {("tiny", "rerandomized", 1, 2, 4, 0)}
    assert [r[6] for r in got] == log["step"] and [r[7] for r in got] == log["fvu"]


def test_convergence_is_computed_from_each_log(synth):
    units = {u.sae.key: u for u in sae_units(build_plan(synth["cfg"]))}
    with duckdb.connect(str(synth["db"]), read_only=True) as con:
        rel = con.sql("SELECT * FROM convergence")
        cols, rows = rel.columns, rel.fetchall()
    assert cols == ["sae_key", "model", "variant", "layer", "expansion", "k", "seed", "steps", "fvu_before",
                    "fvu_end", "improvement", "converged"]
    assert len(rows) == len(units) == 12
    for row in rows:
        r = dict(zip(cols, row, strict=True))
        u = units[r["sae_key"]]
        assert (r["model"], r["variant"], r["layer"], r["seed"]) == ("tiny", u.variant, u.layer, u.seed)
        log = pq.read_table(synth["store"].path("sae", u.sae.key) / LOG_FILE).to_pydict()
        want = convergence(log["step"], log["fvu"])
        assert (r["steps"], r["fvu_before"], r["fvu_end"], r["improvement"], r["converged"]) == tuple(want)
        # the planted curves: every SAE flat by 80% of its steps except UNCONVERGED
        assert r["converged"] is ((u.variant, u.layer, u.seed) != UNCONVERGED), u.tag
    slow = next(dict(zip(cols, r, strict=True)) for r in rows if r[-1] is False)  # converged is the last column
    assert slow["steps"] == TRAIN_STEPS and 0.03 < slow["improvement"] < 0.1


def test_a_log_too_coarse_to_judge_gets_nulls_and_the_report_says_so(tmp_path):
    cfg = synth_config(tmp_path, **{"models.tiny.layers": [1], "sae.seeds": [0]})
    build_synthetic_store(cfg, stages=("sae",), train_steps=15)  # rows at 10 and 15: both windows read row 15
    db = build_database(cfg, cfg["store"], tmp_path / "r.duckdb", n_boot=10, n_perm=10)
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.sql("SELECT steps, fvu_before, fvu_end, improvement, converged FROM convergence").fetchall()
        summary = convergence_summary(con)
    assert rows == [(15, None, None, None, None)] * 3
    assert summary.n == 3 and summary.n_judged == 0 and len(summary.unjudged) == 3
    text = convergence_sentence(summary)
    assert "3 of 3 SAEs have a training log too coarse to judge" in text and "sae.log_every_steps" in text
    assert "converged (" not in text


def test_no_logs_give_empty_tables_a_sentence_and_a_figure(tmp_path):
    cfg = synth_config(tmp_path)
    build_synthetic_store(cfg, stages=("sae_metrics",))
    db = build_database(cfg, cfg["store"], tmp_path / "r.duckdb", n_boot=10, n_perm=10)
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.sql("SELECT count(*) FROM train_log").fetchall()[0][0] == 0
        assert con.sql("SELECT count(*) FROM convergence").fetchall()[0][0] == 0
        assert [c for c, *_ in con.sql("DESCRIBE convergence").fetchall()][-1] == "converged"
        assert convergence_sentence(convergence_summary(con)) == "No training logs yet."
        empty = training_figure(con, tmp_path / "empty.png")
    data = empty.read_bytes()
    assert data[:8] == PNG_MAGIC and 2 * 1024 < len(data) < 20 * 1024  # a small "no training logs yet" panel


def test_training_figure_is_drawn(synth, tmp_path):
    with duckdb.connect(str(synth["db"]), read_only=True) as con:
        path = training_figure(con, tmp_path / "fig_training.png")
    data = path.read_bytes()
    assert path.name == "fig_training.png" and data[:8] == PNG_MAGIC and len(data) > 40 * 1024
    assert not list(tmp_path.glob(".*.tmp"))  # written by rename


def test_summary_and_sentence_on_the_synthetic_store(synth):
    with duckdb.connect(str(synth["db"]), read_only=True) as con:
        s = convergence_summary(con)
        best = con.sql("SELECT max(improvement) FROM convergence").fetchall()[0][0]
    assert (s.n, s.n_converged, s.n_judged, s.unjudged) == (12, 11, 12, [])
    assert s.largest == (_unconverged_tag(), pytest.approx(best)) and [t for t, _ in s.unconverged] == [_unconverged_tag()]
    text = convergence_sentence(s)
    assert text.startswith("11 of 12 SAEs converged (their last 20% of training steps improved training FVU by "
                           "less than 0.01); the largest improvement is ")
    assert f"({_unconverged_tag()})." in text and f"Not converged: {_unconverged_tag()} (+0.0" in text
    assert "`sae.max_tokens`" in text


def test_sentence_when_all_converged_names_no_setting():
    s = ConvergenceSummary(n=3, n_converged=3, largest=("tiny/trained/L1/x2-k4/s0", 0.0042), unconverged=[], unjudged=[])
    text = convergence_sentence(s)
    assert text == ("3 of 3 SAEs converged (their last 20% of training steps improved training FVU by less than "
                    "0.01); the largest improvement is 0.0042 (tiny/trained/L1/x2-k4/s0).")
    many = ConvergenceSummary(n=10, n_converged=0, largest=("a", 0.5), unconverged=[(f"s{i}", 0.5 - i / 100) for i in range(10)],
                              unjudged=[])
    assert "s7 (+0.4300) and 2 more; raise `sae.max_tokens`" in convergence_sentence(many)


def test_report_has_a_training_section_after_the_findings(synth, tmp_path):
    with duckdb.connect(str(synth["db"]), read_only=True) as con:
        fig = training_figure(con, tmp_path / "fig_training.png")
        html = render_report(con, tmp_path / "report.html", figures={"fig_training": fig},
                             captions={"fig_training": "Training FVU"}).read_text()
    heads = re.findall(r"<h2>([^<]+)</h2>", html)
    assert heads.index("Training") == heads.index("Findings: the paper's claims tested on this run") + 1
    training = html.split("<h2>Training</h2>")[1].split("<h2>")[0]
    assert "11 of 12 SAEs converged" in training and f"Not converged: {_unconverged_tag()}" in training
    assert "<code>sae.max_tokens</code>" in training
    assert 'data-file="fig_training.png"' in training and html.count('data-file="fig_training.png"') == 1
