"""The findings table (the paper's claims tested on the run's data), the headline view, the
report's order and the warning about seed lists too short for the per-SAE statistics."""

from __future__ import annotations

import logging
import math
import re

import duckdb
import pytest
from results_synth import build_synthetic_store, synth_config

from randsae.results.db import build_database
from randsae.results.discriminability import seeds_for_verdict
from randsae.results.display import RANDOM_VARIANTS
from randsae.results.findings import CLAIMS, DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, VERDICTS, Rule
from randsae.results.report import render_report

N_BOOT = 200


def _findings(db) -> dict[str, dict]:
    with duckdb.connect(str(db), read_only=True) as con:
        rel = con.sql("SELECT * FROM findings")
        cols = rel.columns
        return {r[0]: dict(zip(cols, r, strict=True)) for r in rel.fetchall()}


def _latents_db(tmp_path, name, entropy_mean=None, **over):
    """A database from a store with latents only (the entropy claims' data)."""
    cfg = synth_config(tmp_path / name, **over)
    kw = {} if entropy_mean is None else {"entropy_mean": entropy_mean}
    build_synthetic_store(cfg, stages=("examples",), **kw)
    return build_database(cfg, cfg["store"], tmp_path / name / "r.duckdb", n_boot=N_BOOT, n_perm=N_BOOT)


# ------------------------------------------------------------------------------ rules


def test_rules_turn_a_ci_into_a_verdict():
    above, within = Rule("above", 0.0), Rule("within", 0.1)
    assert [above.verdict(*ci) for ci in [(0.1, 0.3), (-0.3, -0.1), (-0.1, 0.1)]] == [HOLDS, DOES_NOT_HOLD, INCONCLUSIVE]
    assert Rule("below", 0.1).verdict(0.0, 0.05) == HOLDS and Rule("below", 0.1).verdict(0.2, 0.3) == DOES_NOT_HOLD
    assert [within.verdict(*ci) for ci in [(-0.05, 0.08), (0.12, 0.3), (0.05, 0.2)]] == [HOLDS, DOES_NOT_HOLD, INCONCLUSIVE]
    assert above.verdict(math.nan, math.nan) == INCONCLUSIVE
    assert "+-0.1" in within.text() and "above 0" in above.text()


# --------------------------------------------------------------------------- findings


def test_findings_table_on_the_synthetic_store(synth_db):
    got = _findings(synth_db)
    assert list(got) == [c.id for c in CLAIMS]  # one row per claim, in declaration order
    assert all(r["verdict"] in VERDICTS for r in got.values())
    ent = got["entropy_trained_vs_randomized"]  # planted: trained ~3, random ~1
    assert ent["verdict"] == HOLDS and 1.8 < ent["value"] < 2.2 and 0 < ent["ci_lo"] < ent["value"] < ent["ci_hi"]
    assert ent["n"] > 400 and "latents" in ent["note"]
    # the control is planted with random's low entropy: the paper's "control high" does not hold here
    assert got["entropy_control_above_trained"]["verdict"] == DOES_NOT_HOLD
    # planted: the control's own explanations beat the random ones (Beta(4,2)/(2,4) vs uniform)
    assert got["control_at_chance_detection"]["verdict"] == DOES_NOT_HOLD
    assert got["control_at_chance_detection"]["ci_lo"] > 0.05
    # planted: judge probabilities drawn alike for every variant, so the AUROCs are close
    assert got["auroc_close_detection"]["verdict"] == HOLDS
    assert abs(got["auroc_close_detection"]["ci_lo"]) < 0.1 and abs(got["auroc_close_detection"]["ci_hi"]) < 0.1
    # the synthetic CE gap is the same for every variant: the score is not trained-only here
    assert got["ce_score_trained_only"]["verdict"] == DOES_NOT_HOLD
    for r in got.values():
        assert r["claim"] and r["statistic"] and r["rule"] and r["paper"]
        if r["verdict"] != INCONCLUSIVE:
            assert r["ci_lo"] <= r["ci_hi"]


def test_verdicts_follow_the_data(tmp_path):
    """Same code, different planted data: the verdicts change with it."""
    def flat(variant, layer):
        return 2.0

    def control_high(variant, layer):
        return 4.0 if variant == "control" else 2.0

    def deepening(variant, layer):  # trained's entropy rises with depth, the others' stays flat
        return 1.0 + 2.0 * layer if variant == "trained" else 1.0

    planted = _findings(_latents_db(tmp_path, "planted"))
    no_effect = _findings(_latents_db(tmp_path, "flat", flat))
    high = _findings(_latents_db(tmp_path, "high", control_high))
    deeper = _findings(_latents_db(tmp_path, "deep", deepening))
    assert planted["entropy_trained_vs_randomized"]["verdict"] == HOLDS
    assert no_effect["entropy_trained_vs_randomized"]["verdict"] in (INCONCLUSIVE, DOES_NOT_HOLD)
    assert abs(no_effect["entropy_trained_vs_randomized"]["value"]) < 0.2
    assert planted["entropy_control_above_trained"]["verdict"] == DOES_NOT_HOLD
    assert high["entropy_control_above_trained"]["verdict"] == HOLDS
    assert deeper["entropy_depth_trend"]["verdict"] == HOLDS and 1.5 < deeper["entropy_depth_trend"]["value"] < 2.5
    assert planted["entropy_depth_trend"]["verdict"] != HOLDS


def test_missing_data_is_inconclusive_with_a_reason(tmp_path):
    cfg = synth_config(tmp_path)
    db = build_database(cfg, tmp_path / "empty-store", tmp_path / "r.duckdb", n_boot=20, n_perm=20)
    got = _findings(db)
    assert list(got) == [c.id for c in CLAIMS]
    for r in got.values():
        assert r["verdict"] == INCONCLUSIVE and r["n"] == 0 and math.isnan(r["value"])
        assert "stage not run" in r["note"] or "no model" in r["note"], r


def test_one_seed_gives_a_value_but_no_ci(tmp_path, caplog):
    cfg = synth_config(tmp_path, **{"sae.seeds": [0]})
    build_synthetic_store(cfg, stages=("sae_metrics", "examples"))
    with caplog.at_level(logging.WARNING, logger="randsae.results.discriminability"):
        db = build_database(cfg, cfg["store"], tmp_path / "r.duckdb", n_boot=50, n_perm=50, alpha=0.01)
    ev = _findings(db)["ev_control_lowest"]
    assert math.isfinite(ev["value"]) and math.isnan(ev["ci_lo"]) and ev["verdict"] == INCONCLUSIVE
    assert "sae.seeds" in ev["note"] and "at least 2" in ev["note"]
    assert _findings(db)["entropy_trained_vs_randomized"]["verdict"] == HOLDS  # latents still resample
    # the discriminability warning: one record naming the undefined rows and the seeds needed
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0]
    with duckdb.connect(str(db), read_only=True) as con:
        n_undefined = con.sql("SELECT count(*) FROM discriminability WHERE level = 'sae' AND separated IS NULL").fetchall()[0][0]
    assert n_undefined > 0 and f"{n_undefined} per-SAE row(s)" in msg
    for name in ("explained_variance", "ce_loss_score", "tiny L0 x2-k4 rerandomized", "tiny L1 x2-k4 control"):
        assert name in msg, name
    assert "token_entropy," not in msg  # per-latent rows have their latents
    assert f"needs at least {seeds_for_verdict(0.01)}" in msg and seeds_for_verdict(0.01) == 5


def test_enough_seeds_give_no_warning(tmp_path, caplog):
    cfg = synth_config(tmp_path)  # 2 seeds
    build_synthetic_store(cfg, stages=("sae_metrics",))
    with caplog.at_level(logging.WARNING, logger="randsae.results.discriminability"):
        build_database(cfg, cfg["store"], tmp_path / "r.duckdb", n_boot=20, n_perm=20)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_findings_are_reproducible(synth, tmp_path):
    again = build_database(synth["cfg"], synth["store"], tmp_path / "again.duckdb", n_boot=300, n_perm=300)
    assert str(_findings(again)) == str(_findings(synth["db"]))


# --------------------------------------------------------------------------- headline


def test_headline_has_one_row_per_metric_and_one_column_per_random_variant(synth_db):
    with duckdb.connect(str(synth_db), read_only=True) as con:
        rel = con.sql("SELECT * FROM headline")
        cols, rows = rel.columns, rel.fetchall()
        metrics = {r[0] for r in con.sql("SELECT DISTINCT metric FROM discriminability").fetchall()}
        ent = con.sql("SELECT variant, avg(difference), bool_and(separated) FROM discriminability "
                      "WHERE metric = 'token_entropy' GROUP BY variant").fetchall()
        ev_sep = con.sql("SELECT count(*) FILTER (WHERE separated) FROM discriminability "
                         "WHERE metric = 'explained_variance'").fetchall()[0][0]
    assert cols == ["level", "metric", "rerandomized", "control"]  # the config's random variants, display order
    assert [r[1] for r in rows][:2] == ["explained_variance", "cossim"]  # the paper's metrics first
    assert len(rows) == len(metrics) == len({r[1] for r in rows})
    by_metric = {r[1]: dict(zip(cols, r, strict=True)) for r in rows}
    cell = re.compile(r"^[+-]\S+ \[\S+, \S+\]( \*| \d+/\d+)?$")
    assert all(cell.match(by_metric[m][v]) for m in metrics for v in ("rerandomized", "control"))
    for variant, diff, separated in ent:
        text = by_metric["token_entropy"][variant]
        assert separated and text.endswith(" *")
        value, lo, hi = (float(x) for x in re.findall(r"[-+]?\d+\.?\d*(?:e[-+]\d+)?", text)[:3])
        assert value == pytest.approx(diff, rel=5e-3) and lo < value < hi < 0
    assert ev_sep == 0 and not by_metric["explained_variance"]["control"].endswith("*")


def test_headline_with_one_seed_says_no_ci(tmp_path):
    cfg = synth_config(tmp_path, **{"sae.seeds": [0], "variants": ["trained", "step0", "control"]})
    build_synthetic_store(cfg, stages=("sae_metrics",))
    db = build_database(cfg, cfg["store"], tmp_path / "r.duckdb", n_boot=20, n_perm=20)
    with duckdb.connect(str(db), read_only=True) as con:
        rel = con.sql("SELECT * FROM headline WHERE metric = 'explained_variance'")
        cols, row = rel.columns, rel.fetchall()[0]
    assert cols == ["level", "metric", "step0", "control"]
    assert row[2].endswith("[no CI]") and row[3].endswith("[no CI]")
    assert set(cols[2:]) <= set(RANDOM_VARIANTS)


def test_report_opens_with_the_headline_then_the_findings(synth_db, tmp_path):
    out = render_report(synth_db, tmp_path / "report.html")
    text = out.read_text()
    first = text[text.index("<table>"): text.index("</table>")]
    headers = re.findall(r"<th>([^<]*)</th>", first)
    assert headers == ["level", "metric", "rerandomized", "control"]
    assert re.search(r"<td[^>]*>explained_variance</td>", first)
    h2 = re.findall(r"<h2>([^<]*)</h2>", text)
    assert h2[0] == "Headline" and h2[1].startswith("Findings") and h2.index("Discriminability") > 1
    second = text[text.index("<table>", text.index("</table>")):]
    assert "entropy_trained_vs_randomized" not in second[:200]  # the report shows the claim text
    assert "The trained model&#x27;s token entropy is at least the randomized variants&#x27;." in second
