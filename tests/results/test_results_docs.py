"""docs/results.md documents every table, view, column and example query."""

from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb

from randsae.results.catalog import TABLES, VIEWS
from randsae.results.db import table_names
from randsae.results.queries import EXAMPLE_QUERIES

DOC = Path(__file__).resolve().parents[2] / "docs" / "results.md"


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^### `(\w+)`\n", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_every_table_view_and_column_is_documented(synth_db):
    sections = _sections(DOC.read_text())
    with duckdb.connect(str(synth_db), read_only=True) as con:
        cols = table_names(con)
        settings = set(json.loads(con.sql("SELECT params FROM saes LIMIT 1").fetchall()[0][0]))
    for name in [*TABLES, *VIEWS]:
        assert name in sections, f"no section for {name}"
        body = sections[name]
        assert (TABLES.get(name) or VIEWS[name])[1:] in body  # the catalog sentence
        for c in cols[name]:
            if name == "saes" and c in settings:
                continue  # documented as "every other SAE setting"
            assert re.search(rf"\b{re.escape(c)}\b", body), f"{name}.{c} undocumented"


def test_the_claims_table_is_rendered_from_the_declarations():
    """docs/results.md lists every claim of the findings table as findings.CLAIMS declares it."""
    from randsae.results.findings import CLAIMS, claims_markdown

    text = DOC.read_text()
    assert claims_markdown() in text, "docs/results.md: the claims table drifted from findings.CLAIMS"
    assert all(f"`{c.id}`" in text and c.paper in text for c in CLAIMS)


def test_every_example_query_is_in_the_docs():
    text = DOC.read_text()
    for name, sql in EXAMPLE_QUERIES.items():
        assert f"### Query `{name}`" in text and sql.strip() in text, name


# ------------------------------------------------------------------ column tables from the schemas

REPO = Path(__file__).resolve().parents[2]


def _file_tables():
    from randsae.autointerp.schema import ExplanationRow, ScoreRow, UsageRow
    from randsae.examples_schema import LatentRow
    from randsae.results.schemas import RENAMES

    # db table -> (row schema, renames, columns the plan supplies instead of the file)
    return {"latents": (LatentRow, {}, ()), "explanations": (ExplanationRow, RENAMES, ()),
            "scores": (ScoreRow, RENAMES, ("scorer",)), "llm_usage": (UsageRow, RENAMES, ())}


def _rows_of(table_md: str) -> list[str]:
    return table_md.rstrip("\n").split("\n")[2:]  # without the header and the rule


def test_database_column_tables_are_rendered_from_the_row_schemas():
    """docs/results.md lists each file-backed table's columns exactly as the producing stage's
    row schema declares them (DuckDB types, renamed as loaded), in order, after the identifiers."""
    from randsae.rows import markdown_table

    sections = _sections(DOC.read_text())
    for name, (row, renames, skip) in _file_tables().items():
        want = _rows_of(markdown_table(row, type_names="duckdb", renames=renames, skip=skip))
        body = sections[name].split("\n")
        start = next(i for i, line in enumerate(body) if line.startswith("| identifiers |")) + 1
        assert body[start : start + len(want) + 1] == [*want, ""], f"docs/results.md `{name}` drifted from {row.__name__}"


def test_file_column_tables_are_rendered_from_the_row_schemas():
    """docs/autointerp.md and docs/latents.md show each Parquet file's columns as its schema has them."""
    from randsae.autointerp.schema import ExplanationRow, ScoreRow, UsageRow
    from randsae.examples_schema import LatentRow
    from randsae.rows import markdown_table

    autointerp = (REPO / "docs" / "autointerp.md").read_text()
    for row in (ExplanationRow, ScoreRow, UsageRow):
        assert markdown_table(row) in autointerp, f"docs/autointerp.md: {row.__name__} table drifted"
    assert markdown_table(LatentRow) in (REPO / "docs" / "latents.md").read_text(), "docs/latents.md: LatentRow drifted"


def test_database_tables_have_the_schema_columns_and_types(synth_db):
    """The template the database loads into is the schema: every schema column, with its type."""
    from randsae.rows import duckdb_columns

    with duckdb.connect(str(synth_db), read_only=True) as con:
        for name, (row, renames, skip) in _file_tables().items():
            got = {c: t for c, t, *_ in con.sql(f"DESCRIBE {name}").fetchall()}
            for col, typ in duckdb_columns(row, renames=renames, skip=skip).items():
                assert got.get(col) == typ, f"{name}.{col}: {got.get(col)} in the database, {typ} in {row.__name__}"


def test_train_log_column_table_is_the_trainers_schema():
    """docs/results.md `train_log` lists the trainer's log columns (randsae.sae.train_log.SCHEMA),
    in order and with the types the database loads them as, after the identifiers."""
    from randsae.results.schemas import TRAIN_LOG

    body = _sections(DOC.read_text())["train_log"].split("\n")
    start = next(i for i, line in enumerate(body) if line.startswith("| identifiers |")) + 1
    got = [tuple(c.strip() for c in line.split("|")[1:3]) for line in body[start:] if line.startswith("| `")]
    assert got == [(f"`{c}`", t) for c, t in TRAIN_LOG.items()], "docs/results.md `train_log` drifted from train_log.SCHEMA"
