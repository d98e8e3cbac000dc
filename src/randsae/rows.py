"""Typed row schemas for the Parquet files stages write: one frozen dataclass per file.

Each field is declared with :func:`column`, which gives it an explicit Arrow type and a
one-line meaning. From that single declaration come

- the file's Arrow schema (:func:`arrow_schema`), which the writer writes through
  (:func:`table_from_rows`, :func:`table_from_columns`, :func:`write_table`), so every file of
  a stage has the same columns with the same types, even an empty one or one whose column
  happens to be all null;
- the DuckDB column types the results database uses as its template (:func:`duckdb_columns`);
- the column table in the docs (:func:`markdown_table`; a test checks the docs against it).

Why explicit Arrow types rather than Python annotations: a file's integer widths (int32 latent
ids, float32 activations) are part of its contract, and ``pa.Table.from_pylist`` would infer a
null column for a field that is None in every row.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

_ARROW = "arrow_type"
_DOC = "doc"

#: Arrow type -> DuckDB type name, for the types row schemas use.
_DUCKDB_TYPES: dict[pa.DataType, str] = {
    pa.string(): "VARCHAR",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float32(): "FLOAT",
    pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN",
}
#: The names the docs use for the same types in a file's column table.
_ARROW_NAMES: dict[pa.DataType, str] = {
    pa.string(): "string", pa.int32(): "int32", pa.int64(): "int64",
    pa.float32(): "float32", pa.float64(): "float64", pa.bool_(): "bool",
}


def column(arrow_type: pa.DataType, doc: str) -> Any:
    """A dataclass field with its Arrow type and meaning (no default: every column is given)."""
    if arrow_type not in _DUCKDB_TYPES:
        raise TypeError(f"row schemas support {sorted(map(str, _DUCKDB_TYPES))}, not {arrow_type}")
    return dataclasses.field(metadata={_ARROW: arrow_type, _DOC: doc})


def _fields(row_type: type) -> tuple[dataclasses.Field[Any], ...]:
    if not dataclasses.is_dataclass(row_type):
        raise TypeError(f"{row_type!r} is not a row schema (a dataclass declared with randsae.rows.column)")
    out = dataclasses.fields(row_type)
    for f in out:
        if _ARROW not in f.metadata:
            raise TypeError(f"{row_type.__name__}.{f.name} has no Arrow type: declare it with randsae.rows.column")
    return out


def column_names(row_type: type) -> tuple[str, ...]:
    return tuple(f.name for f in _fields(row_type))


def arrow_schema(row_type: type) -> pa.Schema:
    """The Arrow schema of a file of ``row_type`` rows, in field order."""
    return pa.schema([pa.field(f.name, f.metadata[_ARROW], nullable=True) for f in _fields(row_type)])


def column_docs(row_type: type) -> dict[str, str]:
    return {f.name: f.metadata[_DOC] for f in _fields(row_type)}


def duckdb_type(arrow_type: pa.DataType) -> str:
    return _DUCKDB_TYPES[arrow_type]


def duckdb_columns(row_type: type, *, renames: Mapping[str, str] | None = None,
                   skip: Iterable[str] = ()) -> dict[str, str]:
    """Column name -> DuckDB type: the database table a file of these rows loads into.
    ``renames`` maps file column names to table column names; ``skip`` leaves columns out
    (those the table takes from elsewhere, e.g. identifiers from the plan)."""
    renames = renames or {}
    skipped = set(skip)
    return {renames.get(f.name, f.name): duckdb_type(f.metadata[_ARROW])
            for f in _fields(row_type) if f.name not in skipped}


def table_from_rows(row_type: type, rows: Iterable[Any]) -> pa.Table:
    """A typed table of ``row_type`` instances (any number, none included)."""
    schema = arrow_schema(row_type)
    rows = list(rows)
    for r in rows:
        if type(r) is not row_type:
            raise TypeError(f"expected {row_type.__name__} rows, got {type(r).__name__}")
    cols = {name: [getattr(r, name) for r in rows] for name in schema.names}
    return pa.Table.from_pydict(cols, schema=schema)


def table_from_columns(row_type: type, columns: Mapping[str, Any]) -> pa.Table:
    """A typed table from whole columns (numpy arrays or lists), one per field, no others."""
    schema = arrow_schema(row_type)
    missing, extra = set(schema.names) - set(columns), set(columns) - set(schema.names)
    if missing or extra:
        raise ValueError(f"{row_type.__name__} columns: missing {sorted(missing)}, unexpected {sorted(extra)}")
    return pa.table({name: pa.array(columns[name], type=schema.field(name).type) for name in schema.names})


def check_table(row_type: type, table: pa.Table) -> None:
    """Raise if ``table`` does not have exactly the schema of ``row_type`` (names, order, types)."""
    want = arrow_schema(row_type)
    if not table.schema.remove_metadata().equals(want):
        raise ValueError(f"table does not match {row_type.__name__}:\n  got  {table.schema}\n  want {want}")


def write_table(row_type: type, table: pa.Table, path: str | os.PathLike[str]) -> None:
    """Write a table of ``row_type`` as Parquet, atomically (temporary sibling, then rename),
    so a killed job never leaves half a file."""
    check_table(row_type, table)
    write_parquet_atomic(table, path)


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike[str]) -> None:
    """Write ``table`` to a temporary sibling and rename, so a killed job leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_rows(row_type: type, rows: Iterable[Any], path: str | os.PathLike[str]) -> None:
    write_table(row_type, table_from_rows(row_type, rows), path)


def markdown_table(row_type: type, *, type_names: str = "arrow", renames: Mapping[str, str] | None = None,
                   skip: Iterable[str] = ()) -> str:
    """The docs' column table (``| column | type | meaning |``): Arrow type names
    (``type_names="arrow"``) for a file, DuckDB ones (``"duckdb"``) for a database table."""
    if type_names not in ("arrow", "duckdb"):
        raise ValueError(f"type_names must be 'arrow' or 'duckdb', not {type_names!r}")
    renames = renames or {}
    skipped = set(skip)
    lines = ["| column | type | meaning |", "|---|---|---|"]
    for f in _fields(row_type):
        if f.name in skipped:
            continue
        t = f.metadata[_ARROW]
        shown = duckdb_type(t) if type_names == "duckdb" else _ARROW_NAMES[t]
        lines.append(f"| `{renames.get(f.name, f.name)}` | {shown} | {f.metadata[_DOC]} |")
    return "\n".join(lines) + "\n"
