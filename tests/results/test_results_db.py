"""results.duckdb from a synthetic store: tables, views, example queries, partial stores."""

from __future__ import annotations

import json
import math

import duckdb
import pytest
from results_synth import (
    N_BOOT,
    N_EXPLAINED,
    N_LATENTS,
    N_PERM,
    build_synthetic_store,
    synth_config,
)

from randsae.plan import build_plan
from randsae.results import EXAMPLE_QUERIES, build_database, query
from randsae.results.catalog import TABLES, VIEWS
from randsae.results.db import table_names
from randsae.results.layout import sae_units

EXPECTED_COLUMNS = {
    "saes": ["sae_key", "model", "variant", "layer", "expansion", "k", "seed", "name", "built", "lr", "batch_size"],
    "sae_metrics": ["sae_key", "model", "variant", "layer", "expansion", "k", "seed", "artifact_key", "fvu",
                    "explained_variance", "cossim", "l0", "l1", "ce_loss_score", "ce_score_meaningful"],
    "latents": ["sae_key", "artifact_key", "latent", "n_fires", "token_entropy", "token_lookup_share", "sampled"],
    "explanations": ["sae_key", "latent", "explanation", "ok", "reason", "llm_model", "cost_usd"],
    "scores": ["sae_key", "scorer", "latent", "explanation_source", "example_id", "activating", "quantile", "probability", "ok"],
    "llm_usage": ["sae_key", "artifact_stage", "scorer", "stage", "llm_model", "input_tokens", "cache_write_tokens", "cached"],
    "auroc": ["sae_key", "scorer", "explanation_source", "n_latents", "n_failed", "auroc", "auroc_lo", "auroc_hi",
              "balanced_accuracy", "precision", "recall"],
    "latent_auroc": ["sae_key", "scorer", "explanation_source", "latent", "auroc", "balanced_accuracy"],
    "variant_vs_trained": ["model", "layer", "expansion", "k", "seed", "variant", "metric", "trained_value",
                           "variant_value", "difference"],
    "discriminability": ["model", "layer", "expansion", "k", "level", "metric", "variant", "n_trained", "n_variant",
                         "trained_value", "variant_value", "difference", "difference_lo", "difference_hi",
                         "effect_size", "p_value", "auroc", "auroc_lo", "auroc_hi", "separated", "note"],
    "artifacts": ["key", "stage", "name", "params", "created"],
}


def test_every_table_and_view_exists_with_its_columns(synth_db):
    with duckdb.connect(str(synth_db), read_only=True) as con:
        cols = table_names(con)
        kinds = dict(con.sql("SELECT table_name, 'table' FROM duckdb_tables() UNION ALL "
                             "SELECT view_name, 'view' FROM duckdb_views() WHERE NOT internal").fetchall())
        comments = dict(con.sql("SELECT table_name, comment FROM duckdb_tables()").fetchall())
    assert {n for n, k in kinds.items() if k == "table"} == set(TABLES)
    assert {n for n, k in kinds.items() if k == "view"} == set(VIEWS)
    assert comments["discriminability"] == TABLES["discriminability"]
    for name, expected in EXPECTED_COLUMNS.items():
        assert set(expected) <= set(cols[name]), (name, set(expected) - set(cols[name]))
    assert "model" not in cols["llm_usage"][8:]  # the LLM's model is llm_model; model is ours


@pytest.mark.parametrize("name", sorted(EXAMPLE_QUERIES))
def test_example_queries_return_rows(synth_db, name):
    rows = json.loads(query(synth_db, EXAMPLE_QUERIES[name], "json"))
    assert rows, name


def test_contents_match_the_store(synth):
    cfg, db = synth["cfg"], synth["db"]
    units = sae_units(build_plan(cfg))
    with duckdb.connect(str(db), read_only=True) as con:
        one = lambda q: con.execute(q).fetchall()[0]  # noqa: E731
        assert one("SELECT count(*) FROM saes")[0] == len(units) == 12
        assert one("SELECT count(*) FROM sae_metrics")[0] == 12
        assert one("SELECT count(*) FROM latents")[0] == 12 * N_LATENTS
        assert one("SELECT count(*) FROM explanations")[0] == 12 * N_EXPLAINED
        assert one("SELECT count(*) FROM scores")[0] == 12 * 2 * N_EXPLAINED * 2 * 10
        assert one("SELECT count(DISTINCT artifact_stage) FROM llm_usage")[0] == 2
        # identifiers come from the plan: check one SAE end to end
        u = next(u for u in units if u.variant == "control" and u.layer == 1 and u.seed == 1)
        row = con.execute("SELECT model, variant, layer, expansion, k, seed, artifact_key FROM sae_metrics WHERE sae_key = ?",
                          [u.sae.key]).fetchall()[0]
        assert row == ("tiny", "control", 1, 2, 4, 1, u.related["sae_metrics"].key)
        # one failed example per (SAE, scorer, source): excluded and counted
        assert one("SELECT min(n_failed), max(n_failed), min(n) FROM auroc") == (1, 1, N_EXPLAINED * 10 - 1)
        assert one("SELECT count(*) FROM auroc")[0] == 12 * 2 * 2
        lo, hi, a = one("SELECT min(auroc_lo), max(auroc_hi), avg(auroc) FROM auroc WHERE explanation_source = 'own'")
        assert lo >= 0 and hi <= 1 and a > 0.75  # planted Beta(4,2) vs Beta(2,4)
        assert one("SELECT avg(auroc) FROM auroc WHERE explanation_source = 'control'")[0] < 0.65
        # variant_vs_trained: 2 variants x 2 layers x 2 seeds per metric, trained beside each
        assert one("SELECT count(*), count(trained_value) FROM variant_vs_trained WHERE metric = 'cossim'") == (8, 8)
        d = one("SELECT v.difference - (v.variant_value - v.trained_value) FROM variant_vs_trained v LIMIT 1")[0]
        assert d == 0
        run = one("SELECT seed, n_boot, n_perm, n_built FROM runs")
        assert run[:3] == (0, N_BOOT, N_PERM) and run[3] == one("SELECT count(*) FROM artifacts")[0]
        assert one("SELECT built FROM progress WHERE stage = 'tokens'")[0] == 0


def test_discriminability_finds_exactly_the_planted_metric(synth_db):
    with duckdb.connect(str(synth_db), read_only=True) as con:
        sep = con.sql("SELECT DISTINCT metric FROM discriminability WHERE separated").fetchall()
        ent = con.execute("SELECT min(auroc), max(p_value), max(difference_hi) FROM discriminability "
                      "WHERE metric = 'token_entropy'").fetchall()[0]
        others = con.execute("SELECT min(auroc), max(auroc) FROM discriminability WHERE level = 'latent' "
                         "AND metric IN ('token_lookup_share', 'frequency', 'max_activation')").fetchall()[0]
        n_cells = con.execute("SELECT count(*) FROM discriminability WHERE metric = 'token_entropy'").fetchall()[0][0]
    assert sep == [("token_entropy",)]
    assert n_cells == 4  # 2 layers x 2 random variants
    assert ent[0] > 0.99 and ent[1] < 0.01 and ent[2] < 0  # trained entropy higher: AUROC ~1, CI below 0
    assert others[0] > 0.3 and others[1] < 0.7


def test_missing_stages_give_empty_tables(tmp_path):
    cfg = synth_config(tmp_path)
    build_synthetic_store(cfg, stages=("model", "sae", "sae_metrics"))
    db = build_database(cfg, cfg["store"], tmp_path / "r.duckdb", n_boot=50, n_perm=50)
    with duckdb.connect(str(db), read_only=True) as con:
        counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in [*TABLES, *VIEWS]}
        assert set(EXPECTED_COLUMNS["scores"]) <= set(table_names(con)["scores"])
    assert counts["sae_metrics"] == 12 and counts["variant_vs_trained"] > 0
    for empty in ("latents", "explanations", "scores", "llm_usage", "auroc", "latent_auroc"):
        assert counts[empty] == 0, empty
    # per-SAE metrics with two seeds: compared, never "separated" by an exact test on 2 vs 2
    assert counts["discriminability"] > 0
    for sql in EXAMPLE_QUERIES.values():
        query(db, sql)  # runs without error on the partial database


def test_empty_store_and_nothing_built(tmp_path):
    cfg = synth_config(tmp_path, **{"sae.seeds": [0]})
    db = build_database(cfg, tmp_path / "nothing-here", tmp_path / "out" / "results.duckdb", n_boot=10, n_perm=10)
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM saes").fetchall()[0][0] == 6
        assert con.execute("SELECT count(*) FROM artifacts").fetchall()[0][0] == 0
        assert con.execute("SELECT count(*) FROM discriminability").fetchall()[0][0] == 0
    assert sorted(p.name for p in db.parent.iterdir()) == ["results.duckdb"]  # no temp files left


def test_one_seed_per_side_is_stated(tmp_path):
    cfg = synth_config(tmp_path, **{"sae.seeds": [0]})
    build_synthetic_store(cfg, stages=("sae_metrics", "examples"))
    db = build_database(cfg, cfg["store"], tmp_path / "r.duckdb", n_boot=200, n_perm=200)
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.sql("SELECT DISTINCT n_trained, n_variant, p_value, separated, note FROM discriminability "
                       "WHERE level = 'sae' AND metric = 'explained_variance'").fetchall()
        ent = con.execute("SELECT bool_and(separated) FROM discriminability WHERE metric = 'token_entropy'").fetchall()[0][0]
    assert len(rows) == 1
    n_t, n_v, p, separated, note = rows[0]
    assert (n_t, n_v) == (1, 1) and math.isnan(p) and separated is None and "fewer than 2" in note
    assert ent is True  # per-latent metrics still have their latents as samples


def test_rebuilds_are_reproducible(synth, tmp_path):
    again = build_database(synth["cfg"], synth["store"], tmp_path / "again.duckdb", n_boot=N_BOOT, n_perm=N_PERM)
    sql = "SELECT * FROM {} ORDER BY ALL"
    for table in ("discriminability", "auroc", "latent_auroc"):
        with duckdb.connect(str(synth["db"]), read_only=True) as a, duckdb.connect(str(again), read_only=True) as b:
            assert str(a.sql(sql.format(table)).fetchall()) == str(b.sql(sql.format(table)).fetchall()), table


def test_rebuild_replaces_and_reflects_new_artifacts(tmp_path):
    cfg = synth_config(tmp_path)
    out = tmp_path / "results.duckdb"
    build_synthetic_store(cfg, stages=("sae_metrics",))
    build_database(cfg, cfg["store"], out, n_boot=20, n_perm=20)
    assert query(out, "SELECT count(*) AS n FROM scores", "csv") == "n\n0\n"
    build_synthetic_store(cfg, stages=("examples", "explain", "score"))
    build_database(cfg, cfg["store"], out, n_boot=20, n_perm=20)
    assert query(out, "SELECT count(*) AS n FROM scores", "csv") == f"n\n{12 * 2 * N_EXPLAINED * 2 * 10}\n"


def test_a_file_with_extra_and_missing_columns_is_tolerated(tmp_path):
    """Schema drift in a producing stage: a new column appears, an old one is missing."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cfg = synth_config(tmp_path, **{"sae.seeds": [0]})
    store = build_synthetic_store(cfg, stages=("score",))
    u = sae_units(build_plan(cfg))[0]
    path = store.path("score", u.scores["detection"].key) / "scores.parquet"
    t = pq.read_table(path)
    t = t.drop_columns(["prediction"]).append_column("judge_latency_s", pa.array([0.1] * t.num_rows))
    pq.write_table(t, path)
    db = build_database(cfg, store, tmp_path / "r.duckdb", n_boot=20, n_perm=20)
    out = json.loads(query(db, "SELECT count(*) AS n, count(prediction) AS pred, count(judge_latency_s) AS lat FROM scores", "json"))
    assert out == [{"n": 6 * 2 * N_EXPLAINED * 2 * 10, "pred": 6 * N_EXPLAINED * 2 * 10 * 2 - t.num_rows, "lat": t.num_rows}]


def test_identifier_columns_in_a_file_do_not_override_the_plan(tmp_path):
    """metrics.parquet may carry identifiers of its own (write_row(extra=...)); the plan's win."""
    import pyarrow.parquet as pq

    from randsae.metrics.schema import SaeMetricsRow, write_row

    cfg = synth_config(tmp_path, **{"sae.seeds": [0]})
    store = build_synthetic_store(cfg, stages=("sae_metrics",))
    u = sae_units(build_plan(cfg))[0]
    path = store.path("sae_metrics", u.related["sae_metrics"].key) / "metrics.parquet"
    row = SaeMetricsRow(**{**pq.read_table(path).to_pylist()[0], "layer": 99, "variant": "bogus"})
    write_row(row, path, extra={"model": "someone-else", "sae_key": "x"})
    db = build_database(cfg, store, tmp_path / "r.duckdb", n_boot=10, n_perm=10)
    out = json.loads(query(db, f"SELECT model, variant, layer, sae_key FROM sae_metrics WHERE sae_key = '{u.sae.key}'", "json"))
    assert out == [{"model": "tiny", "variant": u.variant, "layer": u.layer, "sae_key": u.sae.key}]


def test_variants_sort_in_display_order_in_sql(synth_db):
    """The database's variant_order macro ranks variants as randsae.results.display does."""
    from randsae.results.display import sort_variants

    with duckdb.connect(str(synth_db), read_only=True) as con:
        got = [r[0] for r in con.sql("SELECT DISTINCT variant FROM saes ORDER BY variant_order(variant), variant").fetchall()]
        unknown = con.sql("SELECT variant_order('zeta') > variant_order('control') AS later").fetchall()[0][0]
    assert got == sort_variants(got) == ["trained", "rerandomized", "control"]  # not alphabetical
    assert unknown is True
