"""The explain/score output files: rows built from real explainer and scorer results, written
through their typed schemas, read back with the same columns, types and values."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ai_helpers import make_bundle
from fake_client import FakeClient

from randsae import enums
from randsae.autointerp.explainers import LLMExplainer, TokenListExplainer
from randsae.autointerp.schema import (
    ExplanationRow,
    ScoreRow,
    UsageRow,
    explain_usage_rows,
    explanation_rows,
    score_rows,
    score_usage_rows,
)
from randsae.autointerp.scorers import (
    SCORER_CLASSES,
    DetectionScorer,
    FuzzingScorer,
    score_latents,
    scorer_class,
)
from randsae.rows import arrow_schema, column_names, duckdb_columns, table_from_rows, write_rows


def _read(path) -> pa.Table:
    return pq.read_table(path)


def test_explanations_round_trip_with_their_schema(tmp_path):
    bundles = [make_bundle(i) for i in range(3)]
    results = LLMExplainer(FakeClient(fail_every=3)).explain(bundles)
    assert [r.ok for r in results] == [True, True, False]  # the third call fails: a row all the same
    write_rows(ExplanationRow, explanation_rows(results), tmp_path / "explanations.parquet")
    t = _read(tmp_path / "explanations.parquet")
    assert t.schema.remove_metadata().equals(arrow_schema(ExplanationRow))
    rows = t.to_pylist()
    for r, got in zip(results, rows, strict=True):
        assert got == {"latent": r.latent, "explanation": r.explanation, "ok": r.ok, "reason": r.reason,
                       "explainer": r.explainer, "client": r.client, "model": r.model,
                       "input_tokens": r.usage.input_tokens, "output_tokens": r.usage.output_tokens,
                       "cache_read_tokens": r.usage.cache_read_tokens, "cost_usd": r.cost_usd}
    assert rows[2]["reason"].startswith("api")
    usage = table_from_rows(UsageRow, explain_usage_rows(results)).to_pylist()
    assert [u["stage"] for u in usage] == ["explain"] * 3 and usage[0]["input_tokens"] == 10


def test_an_empty_file_keeps_its_columns_and_types(tmp_path):
    """No sampled latent: the files still have every column with its type (not Arrow null)."""
    for row, name in ((ExplanationRow, "e.parquet"), (ScoreRow, "s.parquet"), (UsageRow, "u.parquet")):
        write_rows(row, [], tmp_path / name)
        t = _read(tmp_path / name)
        assert t.num_rows == 0 and t.schema.remove_metadata().equals(arrow_schema(row))
        assert not any(pa.types.is_null(f.type) for f in t.schema)


def test_a_column_that_is_null_in_every_row_keeps_its_type(tmp_path):
    results = TokenListExplainer().explain([make_bundle(0)])
    rows = [ExplanationRow(**{**vars(r), "cost_usd": None}) for r in explanation_rows(results)]
    write_rows(ExplanationRow, rows, tmp_path / "e.parquet")
    assert _read(tmp_path / "e.parquet").schema.field("cost_usd").type == pa.float64()


def test_score_rows_round_trip_with_their_schema(tmp_path):
    bundles = [make_bundle(i) for i in range(3)]
    scores = score_latents(FuzzingScorer(FakeClient(fail_every=4)), bundles, {0: "apple", 1: "apple", 2: "pear"},
                           control=True, seed=1)
    rows = score_rows(scores)
    write_rows(ScoreRow, rows, tmp_path / "scores.parquet")
    t = _read(tmp_path / "scores.parquet")
    assert t.schema.remove_metadata().equals(arrow_schema(ScoreRow))
    examples = [e for s in scores for e in s.examples]
    assert t.num_rows == len(examples) == 2 * 3 * 15
    got = t.to_pylist()
    for e, r in zip(examples, got, strict=True):
        assert (r["latent"], r["example_id"], r["activating"], r["probability"], r["explanation_latent"]) == (
            e.latent, e.index, e.label, e.probability, e.explanation_latent)
    failed = [r for r in got if not r["ok"]]
    assert failed and all(r["probability"] is None and r["prediction"] is None and r["reason"] for r in failed)
    assert {r["explanation_source"] for r in got} == {"own", "control"}
    usage = table_from_rows(UsageRow, score_usage_rows(scores)).to_pylist()
    assert len(usage) == len(scores) and {u["stage"] for u in usage} == {"score"}


def test_rows_of_another_schema_are_refused(tmp_path):
    results = TokenListExplainer().explain([make_bundle(0)])
    with pytest.raises(TypeError, match="expected UsageRow rows, got ExplanationRow"):
        write_rows(UsageRow, explanation_rows(results), tmp_path / "u.parquet")
    assert not (tmp_path / "u.parquet").exists()


def test_database_types_follow_the_arrow_types():
    cols = duckdb_columns(ScoreRow, renames={"model": "llm_model"}, skip=("scorer",))
    assert cols["latent"] == "INTEGER" and cols["example_id"] == "BIGINT" and cols["probability"] == "DOUBLE"
    assert "scorer" not in cols and "model" not in cols and cols["llm_model"] == "VARCHAR"
    assert list(cols)[:3] == ["latent", "explanation_source", "explanation_latent"]
    assert column_names(UsageRow)[0] == "stage"


def test_scorer_registry_is_the_enumeration():
    assert tuple(SCORER_CLASSES) == enums.SCORERS
    assert scorer_class("detection") is DetectionScorer and scorer_class("fuzzing") is FuzzingScorer
    with pytest.raises(ValueError, match="unknown scorer 'intruder'; known: detection, fuzzing"):
        scorer_class("intruder")
