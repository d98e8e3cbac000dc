"""A streamed SAE job (``execution.activations.cache: never``) under real Snakemake: kill -9 of
Snakemake and its job in the middle of training, then a rerun, gives the bytes of an
uninterrupted run; the store holds no train-split activations. Only the SAE and what it reads
are built (the SAE links are the targets), to keep it small."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from _helpers import store_contents
from test_resilience import (
    ENV,
    finish,
    kill_when,
    mid_sae,
    partial_dirs,
    resilience_config,
    snakemake_cmd,
)

from randsae.config import normalise
from randsae.inputs import pin_inputs
from randsae.plan import build_plan
from randsae.store import Store

pytestmark = pytest.mark.slow


def streamed_config(model_dir: Path, workdir: Path) -> dict:
    return resilience_config(model_dir, workdir, workdir / "store", **{"execution.activations.cache": "never"})


def start_saes(workdir: Path, cfg: dict) -> subprocess.Popen:
    """Snakemake in its own session, asked for the SAEs only."""
    import yaml

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    plan = build_plan(pin_inputs(normalise(cfg)))
    targets = [f".randsae/links/sae/{a.key}" for a in plan.stage("sae")]
    with open(workdir / "snakemake.out", "a") as log:
        return subprocess.Popen(snakemake_cmd(workdir, "--cores", "2", *targets), stdout=log,
                                stderr=subprocess.STDOUT, env=ENV, start_new_session=True)


def test_kill_9_mid_streamed_sae_then_rerun_equals_uninterrupted(tmp_path, tiny_model_dir):
    ref_wd, wd = tmp_path / "reference", tmp_path / "killed"
    finish(start_saes(ref_wd, streamed_config(tiny_model_dir, ref_wd)), ref_wd)
    ref = Store(ref_wd / "store")
    ref_saes = {m["key"] for m in ref.iter_meta("sae")}
    assert len(ref_saes) == 1 and ref.verify() == []

    store_dir = wd / "store"
    kill_when(start_saes(wd, streamed_config(tiny_model_dir, wd)), wd, mid_sae(store_dir), "a streamed SAE with checkpoints")
    killed = [d.name for d in partial_dirs(store_dir, "sae") if (d / "checkpoints").is_dir()]
    assert killed and not any(Store(store_dir).exists("sae", k) for k in killed)
    finish(start_saes(wd, streamed_config(tiny_model_dir, wd)), wd)

    store = Store(store_dir)
    assert store.verify() == []
    assert store_contents(store) == store_contents(ref)  # every artifact, bit for bit
    assert any(store.meta("sae", k)["info"]["resumed_from_step"] > 0 for k in killed)
    for s in (store, ref):  # streamed: no activations were ever written, not even partially
        assert not (s.root / "activations").exists() and not (s.root / ".partial" / "activations").exists()
        assert all(s.meta("sae", k)["info"]["activations_source"] == "streamed" for k in ref_saes)
    assert subprocess.run([sys.executable, "-m", "randsae", "store", "verify", "--store", str(store_dir)]).returncode == 0
