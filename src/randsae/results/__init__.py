"""Results: the aggregate stage's human-facing outputs.

Everything the pipeline measured, gathered from the per-artifact Parquet files into one DuckDB
database (``db``), the trained-vs-random discriminability table (``discriminability``), figures
(``figures``), an HTML report (``report``) and a read-only query helper (``query``).
``aggregate.aggregate`` runs them all; docs/results.md describes every table.
"""

from __future__ import annotations

from randsae.results.aggregate import aggregate, expected_outputs
from randsae.results.db import build_database
from randsae.results.queries import EXAMPLE_QUERIES
from randsae.results.query import connect_readonly, query
from randsae.results.report import summary_table

__all__ = [
    "EXAMPLE_QUERIES",
    "aggregate",
    "build_database",
    "connect_readonly",
    "expected_outputs",
    "query",
    "summary_table",
]
