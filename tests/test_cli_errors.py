"""Job errors read like errors: an anticipated error (randsae.errors.RandsaeError) is one line
on stderr with status 2 and no traceback; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import json
import subprocess
import sys

from _helpers import tiny_config

from randsae.config import normalise
from randsae.plan import build_plan


def _build(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "randsae", "build", *args], capture_output=True, text=True, timeout=120)


def test_a_missing_input_is_one_line_without_traceback(tmp_path):
    plan = build_plan(normalise(tiny_config(tmp_path / "m", tmp_path / "store")))
    spec = plan.stage("sae")[0].spec()
    res = _build(["--store", str(tmp_path / "store"), "--spec", json.dumps(spec)])
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("randsae: ")]
    assert len(lines) == 1 and "is not in the store" in lines[0] and spec["name"] in lines[0] and "input model" in lines[0]


def test_a_bad_execution_setting_names_itself(tmp_path):
    plan = build_plan(normalise(tiny_config(tmp_path / "m", tmp_path / "store")))
    spec = plan.stage("model")[0].spec()
    res = _build(["--store", str(tmp_path / "store"), "--spec", json.dumps(spec), "--settings", json.dumps({"kernels": "cuda"})])
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "kernel backend must be one of" in res.stderr


def test_an_unexpected_error_keeps_its_traceback(tmp_path):
    res = _build(["--store", str(tmp_path / "store"), "--spec", json.dumps({"no": "stage"})])
    assert res.returncode not in (0, 2)
    assert "Traceback" in res.stderr and "KeyError" in res.stderr
