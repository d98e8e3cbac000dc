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


def test_every_example_query_is_in_the_docs():
    text = DOC.read_text()
    for name, sql in EXAMPLE_QUERIES.items():
        assert f"### Query `{name}`" in text and sql.strip() in text, name
