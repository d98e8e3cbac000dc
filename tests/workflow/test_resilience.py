"""Kill and resume, and concurrency, on the whole DAG (real Snakemake processes):

- kill -9 of Snakemake and every job it started, once in the middle of activation caching
  and once in the middle of SAE training; reruns finish, the store equals an uninterrupted
  run's bit for bit, and it verifies clean;
- two pipelines with overlapping configs on one store at the same time: both finish, every
  artifact is published exactly once, and the shared artifacts equal the uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from _helpers import store_contents, tiny_config

from randsae.store import Store

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

ENV = dict(os.environ)


def resilience_config(model_dir: Path, workdir: Path, store: Path, **over) -> dict:
    """The tiny config with a longer train split cut into many small chunks, so that the
    activation and SAE jobs last long enough to be killed half way."""
    return tiny_config(model_dir, store, **{
        "results": str(workdir / "results"),
        "corpus.splits.train.tokens": 32768,
        "execution.activations.chunk_tokens": 128,
        # checkpoint every step, so an SAE job spends most of its time with a resumable checkpoint
        "execution.sae.checkpoint_every_steps": 1,
        "variants": ["trained"],
        **over,
    })


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
            "--profile", str(REPO / "profiles" / "local"), "--configfile", str(workdir / "config.yaml"), *args]


def start(workdir: Path, cfg: dict) -> subprocess.Popen:
    """Snakemake in its own session, so killpg reaches it and every job it started."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    cmd = snakemake_cmd(workdir, "--cores", "2")
    with open(workdir / "snakemake.out", "a") as log:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)


def finish(proc: subprocess.Popen, workdir: Path, timeout: float = 600) -> None:
    rc = proc.wait(timeout=timeout)
    assert rc == 0, (workdir / "snakemake.out").read_text()[-4000:]


def kill_when(proc: subprocess.Popen, workdir: Path, moment: Callable[[], bool], what: str, timeout: float = 300) -> None:
    """SIGKILL the whole process group as soon as ``moment()`` holds."""
    deadline = time.monotonic() + timeout
    while not moment():
        if proc.poll() is not None:
            pytest.fail(f"the pipeline ended (rc {proc.returncode}) before {what}:\n"
                        + (workdir / "snakemake.out").read_text()[-3000:])
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # what a user does after a kill: Snakemake's working-directory lock outlives it
    subprocess.run(snakemake_cmd(workdir, "--unlock"), check=True, capture_output=True, env=ENV)


def partial_dirs(store: Path, stage: str) -> list[Path]:
    root = store / ".partial" / stage
    return [d for d in root.iterdir() if d.is_dir()] if root.is_dir() else []


def mid_activations(store: Path) -> Callable[[], bool]:
    """At least one chunk of an activation pass written, the pass not published."""

    def moment() -> bool:
        for d in partial_dirs(store, "activations"):
            try:
                done = json.loads((d / "progress.json").read_text())["chunks_done"]
            except (FileNotFoundError, ValueError):
                continue
            if done >= 2 and not Store(store).exists("activations", d.name):
                return True
        return False

    return moment


def mid_sae(store: Path) -> Callable[[], bool]:
    """An SAE job holds at least two checkpoints and has not published."""

    def moment() -> bool:
        for d in partial_dirs(store, "sae"):
            ckpts = d / "checkpoints"
            n = len(list(ckpts.glob("step-*.pt"))) if ckpts.is_dir() else 0
            if n >= 2 and not Store(store).exists("sae", d.name):
                return True
        return False

    return moment


def published(workdir: Path) -> Counter:
    """How many times each artifact was published, from this pipeline's job logs."""
    counts: Counter = Counter()
    for log in (workdir / "logs").rglob("*.log"):
        for line in log.read_text().splitlines():
            if " published " in line:
                counts[line.rsplit("(", 1)[1].rstrip(")")] += 1
    return counts


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir):
    """An uninterrupted run of the resilience config."""
    wd = tmp_path_factory.mktemp("reference")
    cfg = resilience_config(tiny_model_dir, wd, wd / "store")
    finish(start(wd, cfg), wd)
    store = Store(wd / "store")
    assert store.verify() == []
    return cfg, store_contents(store)


def test_kill_9_mid_activations_and_mid_sae_then_rerun_equals_uninterrupted(reference, tmp_path, tiny_model_dir):
    ref_cfg, ref_contents = reference
    wd, store_dir = tmp_path / "killed", tmp_path / "killed" / "store"
    cfg = resilience_config(tiny_model_dir, wd, store_dir)
    assert {k: v for k, v in cfg.items() if k not in ("store", "results")} == \
        {k: v for k, v in ref_cfg.items() if k not in ("store", "results")}

    kill_when(start(wd, cfg), wd, mid_activations(store_dir), "a half-written activation pass")
    killed_acts = [d.name for d in partial_dirs(store_dir, "activations") if (d / "progress.json").is_file()]
    assert killed_acts and not any(Store(store_dir).exists("activations", k) for k in killed_acts)

    kill_when(start(wd, cfg), wd, mid_sae(store_dir), "an SAE with checkpoints")
    killed_saes = [d.name for d in partial_dirs(store_dir, "sae") if (d / "checkpoints").is_dir()]
    assert killed_saes and not any(Store(store_dir).exists("sae", k) for k in killed_saes)

    finish(start(wd, cfg), wd)
    store = Store(store_dir)
    assert store.verify() == []
    assert subprocess.run([sys.executable, "-m", "randsae", "store", "verify", "--store", str(store_dir)]).returncode == 0
    assert store_contents(store) == ref_contents
    # the reruns really resumed: an activation pass restarted at a later chunk, an SAE from a checkpoint
    logs = "\n".join(p.read_text() for p in (wd / "logs").rglob("*.log"))
    assert "resuming at chunk" in logs
    assert any(store.meta("sae", k)["info"].get("resumed_from_step", 0) > 0 for k in killed_saes)
    assert (wd / "results" / "results.duckdb").is_file()


def test_two_pipelines_on_one_store_at_once(reference, tmp_path, tiny_model_dir):
    ref_cfg, ref_contents = reference
    store_dir = tmp_path / "shared-store"
    wd_a, wd_b = tmp_path / "a", tmp_path / "b"
    cfg_a = resilience_config(tiny_model_dir, wd_a, store_dir)
    # B shares the trained model, the corpus splits and everything trained-model-side with A,
    # and adds a variant of its own
    cfg_b = resilience_config(tiny_model_dir, wd_b, store_dir, variants=["trained", "rerandomized"])
    a, b = start(wd_a, cfg_a), start(wd_b, cfg_b)
    finish(a, wd_a)
    finish(b, wd_b)

    store = Store(store_dir)
    assert store.verify() == []
    final = store_contents(store)
    assert {k: final[k] for k in ref_contents} == ref_contents  # nothing A needs was corrupted
    counts = published(wd_a) + published(wd_b)
    assert {ref.split("/")[1] for ref in counts} == set(final)  # every artifact was published ...
    assert set(counts.values()) == {1}, {k: n for k, n in counts.items() if n != 1}  # ... exactly once
    # Artifacts in both plans were wanted by both pipelines: one built it, the other found it
    # built (in a job, or already when it parsed the workflow), and neither deleted it.
    keys_b = {p.name for p in (wd_b / ".randsae" / "links").glob("*/*")}
    shared = set(ref_contents) & keys_b
    assert len(shared) >= 10 and keys_b - shared  # A's whole plan; and rerandomized's own
    logs = [p.read_text() for wd in (wd_a, wd_b) for p in (wd / "logs").rglob("*.log")]
    found_built = Counter(k for k in shared for text in logs for line in text.splitlines()
                          if "already built by another process" in line and k in line)
    assert max(found_built.values()) == 1 and len(found_built) >= 3, found_built
    for wd in (wd_a, wd_b):
        res = subprocess.run(snakemake_cmd(wd, "-n"), capture_output=True, text=True, env=ENV)
        assert res.returncode == 0 and "Nothing to be done" in res.stdout + res.stderr, (res.stdout + res.stderr)[-3000:]
