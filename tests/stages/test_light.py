"""Planning must not pay for the compute: importing the stages and reading their declarations
loads no torch, transformers or zarr (each stage imports those inside its runner)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "zarr")


def test_stage_declarations_import_no_torch() -> None:
    code = (
        "import json, sys\n"
        "import randsae.stages\n"
        "defs = randsae.stages.stage_defs()\n"
        f"print(json.dumps({{'stages': sorted(defs), 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert {"activations", "latents", "sae_metrics", "tokens", "model"} <= set(got["stages"])
    assert got["heavy"] == [], f"importing randsae.stages loaded {got['heavy']}"
