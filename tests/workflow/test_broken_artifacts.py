"""A broken artifact is never a finished output to Snakemake: when the Snakefile is parsed, a
link to an artifact directory without meta.json is dropped, so the rerun plans the job that
rebuilds it (instead of "Nothing to be done" with the artifact still broken)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _helpers import tiny_config

from randsae.config import normalise
from randsae.inputs import pin_inputs
from randsae.plan import build_plan
from randsae.stages import build
from randsae.store import Store

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def dry_run(workdir: Path, config: dict) -> dict[str, int]:
    """Per-rule job counts of a Snakemake dry run (rules by family; {} when nothing is to do)."""
    cfgfile = workdir / "config.yaml"
    cfgfile.write_text(yaml.safe_dump(config))
    res = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                          "--profile", str(REPO / "profiles" / "local"), "--configfile", str(cfgfile), "-n"],
                         capture_output=True, text=True)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    if "Nothing to be done" in out:
        return {}
    counts: dict[str, int] = {}
    for rule, n in re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1], flags=re.M):
        family = re.sub(r"_[0-9a-f]{10}$", "", rule)
        if family not in ("total", "all", "aggregate"):
            counts[family] = counts.get(family, 0) + int(n)
    return counts


def test_a_linked_artifact_whose_meta_json_is_gone_is_rebuilt(tmp_path, tiny_model_dir):
    cfg = tiny_config(tiny_model_dir, tmp_path / "store")
    plan = build_plan(pin_inputs(normalise(cfg)))
    store = Store(tmp_path / "store")
    for a in plan.stage("model") + plan.stage("tokens"):
        build(a.spec(), store)
    first = dry_run(tmp_path, cfg)  # links the models and token splits at parse time
    assert "model" not in first and "tokens" not in first and first["activations"] == 2, first
    eval_split = plan.by_name["tokens/tiny/kjv/eval"]
    link = tmp_path / ".randsae" / "links" / "tokens" / eval_split.key
    assert link.is_symlink()
    (store.path("tokens", eval_split.key) / "meta.json").unlink()
    again = dry_run(tmp_path, cfg)
    assert again.get("tokens") == 1 and "model" not in again, again
    assert not link.exists() and not link.is_symlink()
