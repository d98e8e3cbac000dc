"""The results database over files that real stages wrote: every artifact of a tiny plan is
built in-process by its own stage (tiny Llama, packaged corpus, token-list explainer, the tiny
model itself as the local judge), then the database is built and each file-backed table must
hold rows with its row schema's columns and types. This is what keeps the hand-planted
synthetic store (results_synth.py) honest: both go through the same schemas."""

from __future__ import annotations

import duckdb
import pyarrow.parquet as pq
import pytest
from _helpers import tiny_config

from randsae.autointerp.schema import ExplanationRow, ScoreRow, UsageRow
from randsae.config import normalise
from randsae.examples_schema import LatentRow
from randsae.plan import build_plan, execution_settings
from randsae.results.db import build_database
from randsae.results.schemas import RENAMES, SAE_METRICS
from randsae.rows import arrow_schema, duckdb_columns
from randsae.stages import build
from randsae.store import Store

#: database table -> (stage, file, row schema, renames, columns the plan supplies)
FILE_TABLES = {
    "latents": ("examples", "latents.parquet", LatentRow, {}, ()),
    "explanations": ("explain", "explanations.parquet", ExplanationRow, RENAMES, ()),
    "scores": ("score", "scores.parquet", ScoreRow, RENAMES, ("scorer",)),
}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("results-pipeline")
    cfg = normalise(tiny_config(tiny_model_dir, root / "store", **{"autointerp.scorers": ["detection"]}))
    plan = build_plan(cfg)
    store = Store(cfg["store"])
    for a in plan:  # plan order: every input before its consumers
        build(a.spec(), store, execution_settings(cfg, a.stage))
    db = build_database(cfg, store, root / "results" / "results.duckdb", n_boot=20, n_perm=20)
    return plan, store, db


def test_every_planned_artifact_was_built(pipeline):
    plan, store, _ = pipeline
    assert all(store.exists(a.stage, a.key) for a in plan)


def test_stage_files_have_exactly_their_schema(pipeline):
    plan, store, _ = pipeline
    for stage, name, row, _, _ in FILE_TABLES.values():
        for a in plan.stage(stage):
            schema = pq.read_schema(store.path(stage, a.key) / name).remove_metadata()
            assert schema.equals(arrow_schema(row)), f"{a.name}/{name}"
    for stage in ("explain", "score"):
        for a in plan.stage(stage):
            assert pq.read_schema(store.path(stage, a.key) / "usage.parquet").remove_metadata().equals(arrow_schema(UsageRow))


def test_database_tables_have_rows_with_the_schema_columns_and_types(pipeline):
    plan, store, db = pipeline
    tables = {**FILE_TABLES, "llm_usage": (None, "usage.parquet", UsageRow, RENAMES, ())}
    with duckdb.connect(str(db), read_only=True) as con:
        for table, (stage, name, row, renames, skip) in tables.items():
            got = {c: t for c, t, *_ in con.sql(f"DESCRIBE {table}").fetchall()}
            for col, typ in duckdb_columns(row, renames=renames, skip=skip).items():
                assert got.get(col) == typ, f"{table}.{col}: {got.get(col)}, schema says {typ}"
            n_db = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
            stages = [stage] if stage else ["explain", "score"]
            n_files = sum(pq.read_metadata(store.path(s, a.key) / name).num_rows for s in stages for a in plan.stage(s))
            assert n_db == n_files > 0, f"{table}: {n_db} rows in the database, {n_files} in the files"
        got = {c: t for c, t, *_ in con.sql("DESCRIBE sae_metrics").fetchall()}
        assert all(got.get(c) == t for c, t in SAE_METRICS.items())
        assert con.execute("SELECT count(*) FROM sae_metrics").fetchall()[0][0] == len(plan.stage("sae_metrics")) > 0
        # identifiers come from the plan, the LLM's name is llm_model, and pooled AUROCs exist
        variants = {r[0] for r in con.sql("SELECT DISTINCT variant FROM scores").fetchall()}
        assert variants == {"trained", "rerandomized"}
        assert con.execute("SELECT count(*) FROM scores WHERE llm_model IS NULL OR scorer <> 'detection'").fetchall()[0][0] == 0
        assert con.execute("SELECT count(*) FROM auroc").fetchall()[0][0] > 0


def test_training_logs_and_convergence_from_the_trainers_files(pipeline):
    """train_log holds every row of every SAE's train_log.parquet (the trainer's schema);
    convergence has one row per SAE, the statistic of that file, NULL where the log is too
    coarse for it (this tiny run logs only a few rows)."""
    from randsae.results.schemas import TRAIN_LOG
    from randsae.sae.convergence import convergence
    from randsae.sae.train_log import LOG_FILE, SCHEMA

    plan, store, db = pipeline
    saes = plan.stage("sae")
    with duckdb.connect(str(db), read_only=True) as con:
        got = {c: t for c, t, *_ in con.sql("DESCRIBE train_log").fetchall()}
        assert all(got.get(c) == t for c, t in TRAIN_LOG.items()) and list(TRAIN_LOG) == SCHEMA.names
        for a in saes:
            log = pq.read_table(store.path("sae", a.key) / LOG_FILE)
            assert log.schema.remove_metadata().equals(SCHEMA)
            rows = con.execute("SELECT step, fvu FROM train_log WHERE sae_key = ? ORDER BY step", [a.key]).fetchall()
            assert rows == list(zip(log["step"].to_pylist(), log["fvu"].to_pylist(), strict=True)) and rows
            conv = con.execute("SELECT steps, fvu_before, fvu_end, improvement, converged FROM convergence "
                               "WHERE sae_key = ?", [a.key]).fetchall()
            try:
                want = tuple(convergence(log["step"].to_pylist(), log["fvu"].to_pylist()))
            except ValueError:
                want = (log["step"].to_pylist()[-1], None, None, None, None)
            assert conv == [want], a.name
