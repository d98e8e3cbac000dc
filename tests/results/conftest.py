"""Fixtures for the results tests: one synthetic store and its database, built once."""

from __future__ import annotations

from pathlib import Path

import pytest
from results_synth import N_BOOT, N_PERM, build_synthetic_store, synth_config

from randsae.results.db import build_database


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("results-synth")
    cfg = synth_config(root)
    store = build_synthetic_store(cfg)
    db = build_database(cfg, store, root / "results" / "results.duckdb", n_boot=N_BOOT, n_perm=N_PERM)
    return {"root": root, "cfg": cfg, "store": store, "db": db}


@pytest.fixture
def synth_db(synth) -> Path:
    return synth["db"]
