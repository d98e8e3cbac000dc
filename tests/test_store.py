"""The store: atomic publication, one builder per key, verify, gc and name lookup."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _helpers import tiny_config

from randsae.config import normalise
from randsae.inputs import pin_inputs
from randsae.plan import build_plan
from randsae.store import Store


def spec(key="0123456789abcdef0123", name="tokens/x/kjv/train"):
    return {"stage": "tokens", "version": 1, "key": key, "name": name, "params": {"p": 1}, "inputs": {}}


def test_publish_writes_meta_with_checksums(tmp_path):
    store = Store(tmp_path)
    with store.publish(spec()) as b:
        assert not b.done
        (b.workdir / "data.bin").write_bytes(b"abc")
        (b.workdir / "sub").mkdir()
        (b.workdir / "sub" / "x.txt").write_text("hello")
        b.extra_meta["n"] = 3
        assert not store.exists("tokens", spec()["key"])  # not visible until the block ends
    assert store.exists("tokens", spec()["key"])
    meta = store.meta("tokens", spec()["key"])
    assert meta["files"]["data.bin"]["size"] == 3
    assert meta["files"]["sub/x.txt"]["sha256"] == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert meta["info"] == {"n": 3} and meta["params"] == {"p": 1} and meta["code_version"]
    assert store.verify() == []


def test_failed_build_publishes_nothing_and_keeps_partial_work(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(RuntimeError), store.publish(spec()) as b:
        (b.workdir / "chunk0").write_bytes(b"done")
        raise RuntimeError("crash")
    assert not store.path("tokens", spec()["key"]).exists()
    with store.publish(spec()) as b:  # the next attempt sees the earlier work (resume)
        assert (b.workdir / "chunk0").read_bytes() == b"done"
    assert store.exists("tokens", spec()["key"])


def _publisher(root: str, tag: str, started, results) -> None:
    store = Store(root)
    with store.publish(spec()) as b:
        if b.done:
            results.put((tag, "skipped"))
            return
        started.set()
        time.sleep(0.5)  # hold the key while the other process tries
        (b.workdir / "who").write_text(tag)
    results.put((tag, "built"))


def test_concurrent_publish_of_one_key_builds_once(tmp_path):
    ctx = mp.get_context("fork")
    started, results = ctx.Event(), ctx.Queue()
    p1 = ctx.Process(target=_publisher, args=(str(tmp_path), "a", started, results))
    p1.start()
    assert started.wait(10)
    p2 = ctx.Process(target=_publisher, args=(str(tmp_path), "b", ctx.Event(), results))
    p2.start()
    p1.join(20)
    p2.join(20)
    outcome = dict(results.get(timeout=5) for _ in range(2))
    assert outcome == {"a": "built", "b": "skipped"}
    store = Store(tmp_path)
    assert (store.path("tokens", spec()["key"]) / "who").read_text() == "a"
    assert store.verify() == []


KILLED_WRITER = """
import sys, time
from randsae.store import Store
spec = {"stage": "tokens", "version": 1, "key": "0123456789abcdef0123", "name": "n", "params": {}, "inputs": {}}
with Store(sys.argv[1]).publish(spec) as b:
    (b.workdir / "half").write_bytes(b"x" * 1000)
    print("writing", flush=True)
    time.sleep(60)
"""


def test_killed_publish_leaves_no_artifact(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = Store(tmp_path)
    assert not store.path("tokens", "0123456789abcdef0123").exists()
    assert list(store.iter_meta()) == []
    assert store.verify() == []
    with store.publish(spec()) as b:  # the lock died with the process; a rerun proceeds
        assert not b.done
    assert store.exists("tokens", spec()["key"])


def test_verify_names_tampered_and_missing_files(tmp_path):
    store = Store(tmp_path)
    with store.publish(spec()) as b:
        (b.workdir / "a").write_text("1")
        (b.workdir / "b").write_text("2")
    d = store.path("tokens", spec()["key"])
    (d / "a").write_text("X")
    (d / "b").unlink()
    (d / "c").write_text("new")
    problems = store.verify()
    assert any("/a: checksum" in p for p in problems)
    assert any("/b: missing" in p for p in problems)
    assert any("/c: not in meta.json" in p for p in problems)
    res = subprocess.run([sys.executable, "-m", "randsae", "store", "verify", "--store", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 1 and "MISMATCH" in res.stdout


def test_gc_removes_only_unreferenced(tmp_path, tiny_model_dir):
    cfg = tiny_config(tiny_model_dir, tmp_path / "store")
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    plan = build_plan(pin_inputs(normalise(cfg)))  # what the command plans (local inputs pinned)
    store = Store(tmp_path / "store")
    keep = plan.stage("tokens")[0]
    for s in (keep.spec(), {**spec(), "key": "f" * 20}):
        with store.publish(s) as b:
            (b.workdir / "x").write_text("x")
    with pytest.raises(RuntimeError), store.publish({**spec(), "key": "e" * 20}):
        raise RuntimeError  # leaves partial work of an unreferenced key
    cmd = [sys.executable, "-m", "randsae", "store", "gc", "--configfile", str(p)]
    dry = subprocess.run([*cmd, "--dry-run"], capture_output=True, text=True, check=True).stdout
    assert "would remove" in dry and "f" * 20 in dry and store.path("tokens", "f" * 20).exists()
    subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert store.exists(keep.stage, keep.key)
    assert not store.path("tokens", "f" * 20).exists()
    assert not store.partial_path("tokens", "e" * 20).exists()


def test_store_path_and_ls(tmp_path, tiny_model_dir):
    cfg = tiny_config(tiny_model_dir, tmp_path / "store")
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    plan = build_plan(pin_inputs(normalise(cfg)))
    a = plan.by_name["tokens/tiny/kjv/eval"]
    run = lambda *args: subprocess.run([sys.executable, "-m", "randsae", "store", *args, "--configfile", str(p)], capture_output=True, text=True)  # noqa: E731
    res = run("path", "tokens/tiny/kjv/eval")
    assert res.returncode == 1 and "not built yet" in res.stderr
    assert Path(res.stdout.strip()) == tmp_path / "store" / "tokens" / a.key
    with Store(tmp_path / "store").publish(a.spec()) as b:
        (b.workdir / "x").write_text("x")
    assert run("path", "tokens/tiny/kjv/eval").returncode == 0
    res = run("path", "sae/tiny/trained/L9/x2-k4/s0")
    assert res.returncode == 2 and "no artifact named" in res.stderr
    listing = json.loads(run("ls", "--json").stdout)
    assert [m["name"] for m in listing] == ["tokens/tiny/kjv/eval"]


def test_link_points_a_workflow_path_at_a_published_artifact(tmp_path):
    store = Store(tmp_path / "store")
    key = spec()["key"]
    link = tmp_path / "wd" / ".randsae" / "links" / "tokens" / key
    with pytest.raises(FileNotFoundError, match=f"tokens/{key} is not in the store"):
        store.link(link)
    assert not os.path.lexists(link)
    with store.publish(spec()) as b:
        (b.workdir / "data.bin").write_bytes(b"abc")
    store.link(link)
    assert link.is_symlink() and Path(os.readlink(link)).is_absolute()
    assert (link / "data.bin").read_bytes() == b"abc"
    # relinking replaces the link in place; removing the link (what Snakemake does to a
    # job's outputs before it runs) leaves the artifact alone
    store.link(link)
    assert link.is_symlink() and not list(link.parent.glob(".*.link"))
    link.unlink()
    assert store.exists("tokens", key) and store.verify() == []


def test_build_cli_links_its_outputs(tmp_path):
    store = Store(tmp_path / "store")
    with store.publish(spec()) as b:
        (b.workdir / "data.bin").write_bytes(b"abc")
    link = tmp_path / "links" / "tokens" / spec()["key"]
    res = subprocess.run([sys.executable, "-m", "randsae", "build", "--store", str(store.root), "--spec", json.dumps(spec()),
                          "--link", str(link)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "already built by another process" in res.stderr  # found, not rebuilt
    assert link.resolve() == store.path("tokens", spec()["key"]).resolve()


def test_a_killed_zarr_writes_temporary_is_not_published(tmp_path):
    """A kill during a chunk write leaves zarr's ``<chunk>.<uuid>.partial``; the resumed job
    rewrites the chunk, and publication drops the dead temporary (it is no file of the artifact),
    while a file that merely ends in .partial stays."""
    import uuid

    import numpy as np
    import zarr

    store = Store(tmp_path)
    with store.publish(spec()) as b:
        arr = zarr.create_array(str(b.workdir / "a.zarr"), shape=(4,), chunks=(2,), dtype="int32")
        arr[:] = np.arange(4)
        dead = b.workdir / "a.zarr" / "c" / f"1.{uuid.uuid4().hex}.partial"
        dead.write_bytes(b"")
        (b.workdir / "notes.partial").write_text("mine")
    meta = store.meta("tokens", spec()["key"])
    assert not any(".partial" in f and "notes" not in f for f in meta["files"])
    assert "notes.partial" in meta["files"] and not dead.exists()
    final = store.path("tokens", spec()["key"])
    assert not list((final / "a.zarr").rglob("*.partial"))
    assert np.array_equal(zarr.open_array(str(final / "a.zarr"), mode="r")[:], np.arange(4))
    assert store.verify() == []
