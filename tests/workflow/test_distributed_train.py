"""An sae group trained by two gloo processes under torchrun (``execution.sae.devices: 2``) equals
the same group trained by one process, byte for byte: three layers (so the device count does not
divide the layer count), two seeds each, mixed cached and streamed layers. A torchrun job killed
with SIGKILL in the middle resumes from its ranks' checkpoints to the same bytes; a restart on
another device count discards them with a warning, and also ends with the same bytes.

Tolerance: none (bitwise). Each SAE's computation reads only its own state and its layer's
batches, the batches travel as raw bytes, and every process runs torch with one thread, the same
as the one-process reference; so no reduction is reordered and equality is exact on the CPU."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _helpers import store_contents, tiny_config

from randsae.config import normalise
from randsae.plan import build_plan, execution_settings
from randsae.stages import build, build_group
from randsae.store import Store

pytestmark = pytest.mark.slow

def torchrun(n: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)]


def group_config(model_dir: Path, store: Path) -> dict:
    return normalise(tiny_config(model_dir, store, **{
        "variants": ["control"],
        "models.tiny.layers": [0, 1, 2],
        "sae.seeds": [0, 1],
        "sae.batch_size": 128,
        "sae.shuffle_block_sequences": 4,
        "sae.shuffle_buffer_tokens": 1024,
        "sae.max_tokens": 60 * 128,  # 60 rounds (a second, reshuffled pass): long enough to kill half way
        "corpus.splits.train.tokens": 4096,
        "execution.activations.cache": "always",
        "execution.sae.checkpoint_every_steps": 3,
    }))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir) -> tuple[dict, list[dict], Path]:
    """The sae group's inputs, built once in this process; layer 1's cached activations are left
    out, so the job streams that layer and reads layers 0 and 2 from the store."""
    root = tmp_path_factory.mktemp("inputs") / "store"
    cfg = group_config(tiny_model_dir, root)
    plan = build_plan(cfg)
    store = Store(root)
    for a in plan.stage("model") + [plan.by_name["tokens/tiny/kjv/train"]]:
        build(a.spec(), store, execution_settings(cfg, a.stage))
    acts = [a for a in plan.stage("activations") if a.labels["layer"] != 1]
    build_group([a.spec() for a in acts], store, execution_settings(cfg, "activations"))
    return cfg, [a.spec() for a in plan.stage("sae")], root


def fresh_store(inputs, where: Path) -> Store:
    """A copy of the inputs' store (keys do not depend on where a store lives)."""
    shutil.copytree(inputs[2], where / "store", symlinks=True)
    return Store(where / "store")


def build_cmd(cfg: dict, specs: list[dict], store: Store, devices: int) -> list[str]:
    settings = {**execution_settings(cfg, "sae"), "devices": devices}
    cmd = ["-m", "randsae", "build", "--store", str(store.root), "--threads", "1",
           "--specs", json.dumps(specs), "--settings", json.dumps(settings)]
    return (torchrun(devices) + cmd) if devices > 1 else [sys.executable, *cmd]


def run(cmd: list[str], log: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "a") as out:
        return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=300)


def sae_contents(store: Store) -> dict:
    """key -> {file: size and sha256} of every SAE (the training summary records wall time)."""
    return {m["key"]: v for m in store.iter_meta("sae") for v in [store_contents(store)[m["key"]]]}


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    """The group trained by one process (one torch thread)."""
    cfg, specs, _ = inputs
    root = tmp_path_factory.mktemp("one-process")
    store = fresh_store(inputs, root)
    assert run(build_cmd(cfg, specs, store, 1), root / "build.log").returncode == 0, (root / "build.log").read_text()
    return sae_contents(store), store


def test_two_gloo_processes_train_the_bytes_of_one(inputs, reference, tmp_path):
    cfg, specs, _ = inputs
    want, ref_store = reference
    store = fresh_store(inputs, tmp_path)
    res = run(build_cmd(cfg, specs, store, 2), tmp_path / "build.log")
    assert res.returncode == 0, (tmp_path / "build.log").read_text()[-5000:]
    got = sae_contents(store)
    assert len(want) == 6 and got == want
    # the SAEs differ from each other: the comparison compares something
    assert len({v["sae.safetensors"]["sha256"] for v in want.values()}) == 6
    metas = [store.meta("sae", s["key"]) for s in specs]
    assert {m["info"]["devices"] for m in metas} == {2}
    assert {m["info"]["activations_source"] for m in metas} == {"cached", "streamed"}
    for m in metas:  # the statistics of both ranks' SAEs reached rank 0's meta.json
        ref = ref_store.meta("sae", m["key"])["info"]
        assert m["info"]["steps"] == ref["steps"] > 0 and m["info"]["fvu"] == ref["fvu"]
    assert store.verify() == [] and not list((store.root / ".partial").rglob("step-*.pt"))


def test_rank_0_serving_only_still_gives_the_bytes_of_one(inputs, reference, tmp_path):
    """Three processes for the two SAEs of the streamed layer: ranks 1 and 2 train one each and
    rank 0 only runs the forward pass and serves (the split of a group whose model leaves no
    room beside it for an SAE)."""
    cfg, specs, _ = inputs
    two = [s for s in specs if s["params"]["layer"] == 1]
    assert len(two) == 2
    store = fresh_store(inputs, tmp_path)
    res = run(build_cmd(cfg, two, store, 3), tmp_path / "build.log")
    assert res.returncode == 0, (tmp_path / "build.log").read_text()[-5000:]
    assert "rank 0: 0, rank 1: 1, rank 2: 1" in (tmp_path / "build.log").read_text()
    got = sae_contents(store)
    assert set(got) == {s["key"] for s in two} and all(got[k] == reference[0][k] for k in got)
    assert {store.meta("sae", s["key"])["info"]["devices"] for s in two} == {3}


def _rank_checkpoints(store: Store) -> list[Path]:
    return sorted((store.root / ".partial" / "sae").glob("*/checkpoints/w2-*/rank-1/step-*.pt"))


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _kill_tree(pid: int) -> None:
    """SIGKILL torchrun and its workers at once, like a node going away."""
    for p in [pid, *_descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def _kill_mid_run(cfg, specs, store, log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "a") as out:
        proc = subprocess.Popen(build_cmd(cfg, specs, store, 2), stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    deadline = time.monotonic() + 120
    while len(_rank_checkpoints(store)) < 2:
        if proc.poll() is not None:
            pytest.fail(f"the job ended (rc {proc.returncode}) before rank 1 checkpointed:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            _kill_tree(proc.pid)
            pytest.fail("timed out waiting for rank 1's checkpoints")
        time.sleep(0.02)
    _kill_tree(proc.pid)
    proc.wait()
    assert not any(store.exists("sae", s["key"]) for s in specs)


@pytest.mark.parametrize("restart_devices", [2, 1])
def test_a_killed_torchrun_job_resumes_or_restarts_to_the_same_bytes(inputs, reference, tmp_path, restart_devices):
    cfg, specs, _ = inputs
    store = fresh_store(inputs, tmp_path)
    log = tmp_path / "build.log"
    _kill_mid_run(cfg, specs, store, log)
    killed_at = max(int(p.stem.split("-")[1]) for p in _rank_checkpoints(store))
    assert killed_at > 0
    mark = len(log.read_text())
    assert run(build_cmd(cfg, specs, store, restart_devices), log).returncode == 0, log.read_text()[-5000:]
    rerun = log.read_text()[mark:]
    if restart_devices == 2:
        assert "resuming every rank from step" in rerun
    else:
        assert "discarding checkpoints of a run on another number of devices" in rerun
    assert sae_contents(store) == reference[0]
