"""Read-only queries against results.duckdb, for the ``randsae query`` command and scripts.

Why opening never fails while a pipeline runs: the aggregate job publishes a new database by
renaming a finished file over the old one, so the published path always names a complete
database and a read-only open of it needs no lock that the job holds. The one case where a
read-only open is refused is a *read-write* connection held by some other process (DuckDB
allows none beside it: someone has the file open in a DuckDB shell, say). Then the open is
retried for a short while, and if the lock persists the file is copied to a temporary folder
and the copy is opened: the answer reflects the file as it was when copied.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import decimal
import io
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import duckdb

Format = Literal["table", "csv", "json"]
FORMATS: tuple[str, ...] = ("table", "csv", "json")


def _open(path: Path, retry_seconds: float) -> duckdb.DuckDBPyConnection | None:
    """A read-only connection, or None when a conflicting lock outlasted the retries."""
    deadline = time.monotonic() + retry_seconds
    delay = 0.02
    while True:
        try:
            return duckdb.connect(str(path), read_only=True)
        except duckdb.IOException:
            if time.monotonic() >= deadline:
                return None
            time.sleep(delay)
            delay = min(2 * delay, 0.25)


@contextlib.contextmanager
def connect_readonly(db_path: str | os.PathLike[str], *, retry_seconds: float = 2.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to the results database, closed on exit (see module doc)."""
    path = Path(db_path)
    if not path.is_file():
        raise FileNotFoundError(f"no results database at {path}: run the aggregate step first")
    con = _open(path, retry_seconds)
    if con is not None:
        try:
            yield con
        finally:
            con.close()
        return
    with tempfile.TemporaryDirectory(prefix="randsae-query-") as tmp:
        copy = Path(tmp) / path.name
        shutil.copyfile(path, copy)
        con = duckdb.connect(str(copy), read_only=True)
        try:
            yield con
        finally:
            con.close()


def query(db_path: str | os.PathLike[str], sql: str, fmt: Format = "table", *, max_rows: int | None = None) -> str:
    """Run ``sql`` on the database read-only and render the result as text.

    ``fmt``: ``table`` (aligned columns for a terminal), ``csv`` (header + rows) or ``json``
    (a list of objects; NaN becomes null, timestamps ISO 8601). ``max_rows`` caps the rows
    rendered (``table`` then says how many there were). A statement without a result gives "".
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    with connect_readonly(db_path) as con:
        rel = con.sql(sql)
        if rel is None:
            return ""
        columns = list(rel.columns)
        rows = rel.fetchall()
    total = len(rows)
    if max_rows is not None:
        rows = rows[:max_rows]
    if fmt == "csv":
        return to_csv(columns, rows)
    if fmt == "json":
        return to_json(columns, rows)
    return to_table(columns, rows, total=total)


# ------------------------------------------------------------------------- rendering


def _plain(v: Any) -> Any:
    """A JSON-safe value."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if v is None or isinstance(v, bool | int | str):
        return v
    return str(v)


def to_json(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return json.dumps([{c: _plain(v) for c, v in zip(columns, r, strict=True)} for r in rows], indent=1, allow_nan=False)


def to_csv(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if v is None else (v.isoformat() if isinstance(v, dt.datetime | dt.date) else v) for v in r])
    return buf.getvalue()


def format_cell(v: Any, width: int = 60) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, dt.datetime):
        return v.isoformat(sep=" ")
    s = str(v).replace("\n", " ")
    return s if len(s) <= width else s[: width - 1] + "…"


def to_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, total: int | None = None) -> str:
    """Aligned text columns; numbers right-aligned."""
    cells = [[format_cell(v) for v in r] for r in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    numeric = [bool(rows) and all(isinstance(r[i], int | float) and not isinstance(r[i], bool) or r[i] is None for r in rows)
               for i in range(len(columns))]

    def line(vals: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric, strict=True)).rstrip()

    out = [line(columns), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    total = len(rows) if total is None else total
    out.append(f"({total} row{'s' if total != 1 else ''}" + (f", {len(rows)} shown)" if total > len(rows) else ")"))
    return "\n".join(out) + "\n"
