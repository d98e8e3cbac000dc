"""Run the Triton equivalence tests under the Triton interpreter in a subprocess.

Triton reads TRITON_INTERPRET once per process, when triton.language is imported, and by the time
this test runs the pytest process has imported triton without it (or not at all, but other tests
could have). A fresh interpreter process with the variable set from the start is the one reliable
way to test the kernels on a machine without a GPU. See test_kernels_triton.py for the tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

from randsae.kernels.triton_mode import interpreted  # noqa: E402

TRITON_TESTS = Path(__file__).with_name("test_kernels_triton.py")
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(interpreted(), reason="this process interprets: the tests ran in-process")
def test_triton_kernels_match_reference_under_interpreter():
    # The child's tests choose their kernel backend themselves (dispatch.set_backend).
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", str(TRITON_TESTS), "-q", "-p", "no:cacheprovider"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    report = f"{' '.join(cmd)}\n--- stdout ---\n{proc.stdout[-8000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, report
    # It must really have run the tests, not skipped them (e.g. had the variable not reached it).
    summary = proc.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 32, report
    assert "skipped" not in summary and "deselected" not in summary, report
