"""query(): formats, read-only, and opening while the database is replaced or locked."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import duckdb
import pytest

from randsae.results import build_database, query

READER = r"""
import json, sys, time
from pathlib import Path
from randsae.results import query
db, stop = sys.argv[1], Path(sys.argv[2])
Path(sys.argv[3]).touch()  # imported: ready to query
ok, failures = 0, []
while not stop.exists():
    try:
        out = query(db, "SELECT count(*) AS n FROM saes JOIN sae_metrics USING (sae_key)", "csv")
        assert out in ("n\n12\n", "n\n6\n"), out
        ok += 1
    except Exception as e:
        failures.append(repr(e))
print(json.dumps({"ok": ok, "failures": failures[:5], "n_failures": len(failures)}))
"""

HOLDER = r"""
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])  # read-write: takes the exclusive lock
print("holding", flush=True)
time.sleep(60)
"""


def test_formats(synth_db):
    table = query(synth_db, "SELECT variant, count(*) AS n FROM saes GROUP BY variant ORDER BY variant")
    lines = table.splitlines()
    assert lines[0].split() == ["variant", "n"] and lines[2].split() == ["control", "4"] and lines[-1] == "(3 rows)"
    assert query(synth_db, "SELECT 1 AS a, 'x' AS b", "csv") == "a,b\n1,x\n"
    rows = json.loads(query(synth_db, "SELECT 'NaN'::DOUBLE AS x, NULL AS y, TIMESTAMP '2025-01-02 03:04:05' AS t", "json"))
    assert rows == [{"x": None, "y": None, "t": "2025-01-02T03:04:05"}]
    short = query(synth_db, "SELECT * FROM range(10)", max_rows=3)
    assert short.splitlines()[-1] == "(10 rows, 3 shown)"
    with pytest.raises(ValueError, match="unknown format"):
        query(synth_db, "SELECT 1", "xml")  # type: ignore[arg-type]


def test_read_only_and_missing(synth_db, tmp_path):
    with pytest.raises(duckdb.Error):
        query(synth_db, "CREATE TABLE oops (a INTEGER)")
    with pytest.raises(FileNotFoundError, match="aggregate"):
        query(tmp_path / "nope.duckdb", "SELECT 1")


def test_query_while_another_process_holds_a_write_lock(synth_db, tmp_path):
    db = tmp_path / "locked.duckdb"
    shutil.copyfile(synth_db, db)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(duckdb.IOException):  # what a plain read-only open does
            duckdb.connect(str(db), read_only=True)
        t0 = time.monotonic()
        assert query(db, "SELECT count(*) AS n FROM saes", "csv") == "n\n12\n"  # retried, then a copy
        assert time.monotonic() - t0 < 30
    finally:
        holder.kill()
        holder.wait()


def test_readers_never_fail_while_the_database_is_replaced(synth, tmp_path):
    """A writer rebuilds and republishes the database again and again while two reader
    processes query it in a loop: every query succeeds."""
    from results_synth import synth_config

    db = tmp_path / "results" / "results.duckdb"
    small_cfg = synth_config(synth["root"], **{"sae.seeds": [0]})  # same store, a 6-SAE subset
    variants = [tmp_path / "a.duckdb", tmp_path / "b.duckdb"]
    shutil.copyfile(synth["db"], variants[0])
    build_database(small_cfg, synth["store"], variants[1], n_boot=10, n_perm=10)
    db.parent.mkdir()
    shutil.copyfile(variants[0], db)
    stop = tmp_path / "stop"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(db), str(stop), str(r)], stdout=subprocess.PIPE, text=True)
               for r in ready]
    try:
        # wait until both readers have imported randsae (seconds on a loaded machine), so the
        # replacements below happen while they query, not before they start
        deadline = time.monotonic() + 120
        while not all(r.exists() for r in ready) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(r.exists() for r in ready), "reader processes did not start within 120 s"
        for i in range(2):  # real rebuilds: temp file in the same folder, then rename
            build_database(small_cfg if i % 2 else synth["cfg"], synth["store"], db, n_boot=10, n_perm=10)
        deadline = time.monotonic() + 3.0
        i = 0
        while time.monotonic() < deadline:  # fast republishing: copy to a temp sibling, rename
            tmp = db.with_name(f".{db.name}.{i}.tmp")
            shutil.copyfile(variants[i % 2], tmp)
            tmp.replace(db)
            i += 1
            time.sleep(0.01)
    finally:
        stop.touch()
        results = [json.loads(r.communicate(timeout=60)[0]) for r in readers]
    assert i > 20
    for r in results:
        assert r["n_failures"] == 0, r["failures"]
        assert r["ok"] > 5
