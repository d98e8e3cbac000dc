"""The tiny DAG through profiles/slurm on a real one-node SLURM cluster (.ci/run starts
it with scripts/slurm-up.sh): jobs really go through sbatch, GPU stages land in the GPU
partition with a GPU, and the artifacts equal a local run's bit for bit."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _helpers import store_contents, tiny_config

from randsae.store import Store

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def slurm_up() -> bool:
    if not shutil.which("scontrol"):
        return False
    res = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    return "UP" in res.stdout


@pytest.fixture(scope="module")
def cluster():
    if not slurm_up():
        if os.environ.get("RANDSAE_REQUIRE_SLURM") == "1":
            pytest.fail("RANDSAE_REQUIRE_SLURM=1 but no SLURM controller answers (run scripts/slurm-up.sh)")
        pytest.skip("no SLURM cluster here: .ci/run starts one with scripts/slurm-up.sh")


def small_memory_profile(dest: Path) -> Path:
    """profiles/slurm as shipped, with memory requests scaled to this small node."""
    prof = yaml.safe_load((REPO / "profiles/slurm/config.v8+.yaml").read_text())
    prof["default-resources"]["mem_mb"] = 1500
    prof["slurm-init-seconds-before-status-checks"] = 2  # a test cluster answers at once
    prof["seconds-between-status-checks"] = 3
    for res in prof["set-resources"].values():
        res["mem_mb"] = 2000
    # thread counts as in profiles/local, so the bits can be compared with a local run
    prof["set-threads"] = yaml.safe_load((REPO / "profiles/local/config.v8+.yaml").read_text())["set-threads"]
    dest.mkdir(parents=True)
    (dest / "config.v8+.yaml").write_text(yaml.safe_dump(prof))
    return dest


def run(workdir: Path, cfg: dict, profile: Path) -> str:
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                          "--profile", str(profile), "--configfile", str(workdir / "config.yaml")],
                         capture_output=True, text=True, timeout=900)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    return out


def test_tiny_dag_through_slurm_equals_local_run(cluster, tmp_path, tiny_model_dir):
    profile = small_memory_profile(tmp_path / "profile")
    (tmp_path / "slurm").mkdir()
    (tmp_path / "local").mkdir()
    cfg_slurm = tiny_config(tiny_model_dir, tmp_path / "slurm" / "store")
    cfg_local = tiny_config(tiny_model_dir, tmp_path / "local" / "store")
    out = run(tmp_path / "slurm", cfg_slurm, profile)
    job_ids = re.findall(r"submitted with SLURM jobid (\d+)", out)
    # 2 models, 3 splits, 2 activation passes, 2 variants x (SAE, metrics, latents, examples, explain,
    # score: one job for both scorers)
    assert len(job_ids) == 19
    # GPU stages went to the GPU partition with a GPU; the rest to the CPU partition
    for rule, jid in re.findall(r"rule_(\w+?)/(\d+)\.log", out):
        show = subprocess.run(["scontrol", "show", "job", jid], capture_output=True, text=True).stdout
        if rule.startswith(("activations", "sae", "latents", "explain", "score")):  # local LLM judge: GPU
            assert "Partition=gpu" in show and "gpu:1" in show, show
        else:
            assert "Partition=cpu" in show, show
    run(tmp_path / "local", cfg_local, REPO / "profiles" / "local")
    slurm_store, local_store = Store(tmp_path / "slurm" / "store"), Store(tmp_path / "local" / "store")
    # Every file is bit-identical, except the SAE training summary (it records wall time).
    slurm_meta, local_meta = store_contents(slurm_store), store_contents(local_store)
    assert slurm_meta == local_meta and len(slurm_meta) == 21
    assert slurm_store.verify() == []
