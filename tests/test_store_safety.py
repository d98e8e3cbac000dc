"""The store can't be destroyed by a typo, and corruption is caught where it matters (issue 15,
points 3 and 4): the store marker; gc, verify and ls refusing a folder that is not a store; gc
with ``store: .`` offering nothing but artifacts; a job checking its inputs against meta.json;
``randsae store rm`` removing a damaged artifact and what was built from it, after which a
rebuild gives the same bits."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _helpers import tiny_config

from randsae.cli import main
from randsae.config import normalise
from randsae.inputs import pin_inputs
from randsae.plan import build_plan
from randsae.stages import build, build_group
from randsae.stages.sae import cached_activations
from randsae.store import MARKER, DamagedArtifact, InputCheck, NotAStore, Store

SAE = "sae/tiny/trained/L1/x2-k4/s0"


def plan_of(cfg: dict):
    """The plan the commands compute from a config file (local inputs pinned)."""
    return build_plan(pin_inputs(normalise(cfg)))


def spec(key: str = "0123456789abcdef0123", stage: str = "tokens") -> dict:
    return {"stage": stage, "version": 1, "key": key, "name": f"{stage}/{key[:4]}", "params": {}, "inputs": {}}


def publish(store: Store, s: dict, files: dict[str, bytes]) -> Path:
    with store.publish(s) as b:
        for name, data in files.items():
            (b.workdir / name).write_bytes(data)
    return store.path(s["stage"], s["key"])


def cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------ marker and refusals


def test_publish_marks_the_store_and_verify_ls_gc_refuse_an_unmarked_folder(tmp_path, capsys, tiny_model_dir):
    store = Store(tmp_path / "store")
    publish(store, spec(), {"x": b"x"})
    marker = json.loads((store.root / MARKER).read_text())
    assert marker["randsae_store"] == 1 and marker["created"]
    # a folder of source files, say a typo'd --store: nothing listed, nothing offered
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("x = 1\n")
    (src / "README.md").write_text("hi\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tiny_model_dir, src)))
    for args in (("verify",), ("ls",), ("gc", "--dry-run", "--configfile", str(cfg))):
        rc, out, err = cli(capsys, "store", *args, "--store", str(src))
        assert rc == 2 and "is not a randsae store" in err and "would remove" not in out, (args, out, err)
    with pytest.raises(NotAStore):
        Store(src).gc(set(), dry_run=True)
    assert (src / "pkg" / "mod.py").is_file() and (src / "README.md").is_file()


def test_verify_of_a_missing_or_empty_store_is_an_error(tmp_path, capsys):
    rc, out, err = cli(capsys, "store", "verify", "--store", str(tmp_path / "nowhere"))
    assert rc == 2 and "does not exist" in err and "clean" not in out
    Store(tmp_path / "empty").create()
    rc, out, err = cli(capsys, "store", "verify", "--store", str(tmp_path / "empty"))
    assert rc == 1 and "holds no artifacts" in err and "clean" not in out
    # the same through the real command line: a non-zero exit status
    res = subprocess.run([sys.executable, "-m", "randsae", "store", "verify", "--store", str(tmp_path / "nowhere")],
                         capture_output=True, text=True)
    assert res.returncode != 0 and "does not exist" in res.stderr


def test_a_store_from_before_markers_is_refused_with_the_way_out_then_adopted(tmp_path, capsys):
    store = Store(tmp_path / "store")
    publish(store, spec(), {"x": b"x"})
    (store.root / MARKER).unlink()
    rc, _, err = cli(capsys, "store", "verify", "--store", str(store.root))
    assert rc == 2 and f"randsae store init --store {store.root}" in err
    rc, out, _ = cli(capsys, "store", "init", "--store", str(store.root))
    assert rc == 0 and "1 artifacts adopted" in out and store.is_store()
    rc, out, _ = cli(capsys, "store", "verify", "--store", str(store.root))
    assert rc == 0 and "verified 1 artifacts" in out and "clean" in out
    # a non-empty folder without artifacts is made a store only on purpose
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("n")
    rc, _, err = cli(capsys, "store", "init", "--store", str(other))
    assert rc == 2 and "--force" in err and not Store(other).is_store()
    assert cli(capsys, "store", "init", "--store", str(other), "--force")[0] == 0 and Store(other).is_store()


def test_gc_with_store_dot_offers_only_unreferenced_artifacts(tmp_path, capsys, monkeypatch, tiny_model_dir):
    proj = tmp_path / "proj"
    for rel, text in {"data/corpus.txt": "text", "logs/tokens/a.log": "log", "README.md": "readme",
                      "model/notes/n.txt": "n", "sae/" + "a" * 20 + "/meta.json": '{"hello": 1}'}.items():
        (proj / rel).parent.mkdir(parents=True, exist_ok=True)
        (proj / rel).write_text(text)
    (proj / "model" / ("b" * 20)).mkdir()  # a broken artifact (no meta.json): for store rm, not gc
    cfg = tiny_config(tiny_model_dir, ".")
    (proj / "c.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(proj)
    store = Store(".")
    keep = plan_of(cfg).stage("tokens")[0]
    publish(store, keep.spec(), {"x": b"keep"})
    publish(store, spec("f" * 20), {"x": b"old"})
    with pytest.raises(RuntimeError), store.publish(spec("e" * 20)):
        raise RuntimeError  # partial work of an unreferenced key
    rc, out, _ = cli(capsys, "store", "gc", "--configfile", "c.yaml", "--dry-run")
    offered = {Path(line.removeprefix("would remove ")).as_posix() for line in out.splitlines()
               if line.startswith("would remove ") and " entries; " not in line}
    assert rc == 0 and offered == {"tokens/" + "f" * 20, ".partial/tokens/" + "e" * 20,
                                   ".locks/tokens-" + "f" * 20 + ".lock", ".locks/tokens-" + "e" * 20 + ".lock"}, out
    rc, out, _ = cli(capsys, "store", "gc", "--configfile", "c.yaml")
    assert rc == 0 and not store.path("tokens", "f" * 20).exists() and store.exists("tokens", keep.key)
    for rel in ("data/corpus.txt", "logs/tokens/a.log", "README.md", "model/notes/n.txt", "sae/" + "a" * 20 + "/meta.json",
                "model/" + "b" * 20, "c.yaml", MARKER):
        assert (proj / rel).exists(), rel
    # ls lists randsae's artifacts only (the foreign meta.json is not one); verify reports the
    # artifact-shaped directories that are not whole artifacts, and nothing else
    assert [m["key"] for m in store.iter_meta()] == [keep.key]
    assert store.verify() == ["model/" + "b" * 20 + ": no meta.json (incomplete or damaged artifact; "
                              "`randsae store rm model/" + "b" * 20 + " --store .` removes it and what was built from it)",
                              "sae/" + "a" * 20 + ": meta.json is not this artifact's (stage/key differ or no file list)"]


# ---------------------------------------------------------------------- the input check


def test_check_of_a_large_artifact_uses_size_and_the_ends_of_large_files(tmp_path):
    cheap = InputCheck(full_hash_max_bytes=0, ends_bytes=16)  # every artifact counts as large
    store = Store(tmp_path, cheap)
    big = bytes(range(100))
    d = publish(store, spec(), {"big.bin": big, "small.txt": b"0123456789"})
    files = store.meta("tokens", spec()["key"])["files"]
    assert files["big.bin"]["ends"] == {"bytes": 16, "sha256": hashlib.sha256(big[:16] + big[-16:]).hexdigest()}
    assert "ends" not in files["small.txt"]
    store.check("tokens", spec()["key"])  # clean
    # same Store object: a file changed after a passing check is checked again
    for offset, what in ((95, "first or last 16 bytes"), (3, "first or last 16 bytes")):
        flip_byte(d / "big.bin", offset)
        with pytest.raises(DamagedArtifact, match=f"big.bin: its {what}"):
            store.check("tokens", spec()["key"])
        flip_byte(d / "big.bin", offset)
    flip_byte(d / "big.bin", 50)  # the middle of a large file: only a full hash sees it
    store.check("tokens", spec()["key"])
    assert store.verify() == [f"tokens/{spec()['key']}/big.bin: checksum or size mismatch"]
    with pytest.raises(DamagedArtifact, match="big.bin does not match its sha256"):
        Store(tmp_path).check("tokens", spec()["key"])  # the default check hashes a small artifact whole
    flip_byte(d / "big.bin", 50)
    (d / "big.bin").write_bytes(big[:-1])
    with pytest.raises(DamagedArtifact, match="big.bin has 99 bytes, meta.json records 100"):
        store.check("tokens", spec()["key"])
    (d / "big.bin").write_bytes(big)
    flip_byte(d / "small.txt", 5)
    with pytest.raises(DamagedArtifact, match="small.txt does not match its sha256"):
        store.check("tokens", spec()["key"])
    (d / "small.txt").unlink()
    with pytest.raises(DamagedArtifact, match="small.txt is missing"):
        store.check("tokens", spec()["key"])


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_model_dir):
    """A real store up to one SAE (trained variant only), built with the stages."""
    tmp = tmp_path_factory.mktemp("safety")
    cfg = tiny_config(tiny_model_dir, tmp / "store")
    cfg["variants"] = ["trained"]
    plan = plan_of(cfg)
    store = Store(tmp / "store")
    for a in plan.stage("model") + plan.stage("tokens"):
        build(a.spec(), store)
    build_group([a.spec() for a in plan.stage("activations")], store)
    build(plan.by_name[SAE].spec(), store)
    return plan, store


@pytest.fixture
def fresh(pipeline, tmp_path):
    """A copy of the pipeline's store to damage."""
    plan, store = pipeline
    shutil.copytree(store.root, tmp_path / "store")
    return plan, Store(tmp_path / "store")


@pytest.fixture
def config_file(fresh, tiny_model_dir):
    """The pipeline fixture's config, pointed at the copy of its store."""
    plan, store = fresh
    cfg = tiny_config(tiny_model_dir, store.root)
    cfg["variants"] = ["trained"]
    assert plan_of(cfg).keys() == plan.keys()
    path = store.root.parent / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def sha(store: Store, name: str, plan, file: str) -> str:
    a = plan.by_name[name]
    return store.meta(a.stage, a.key)["files"][file]["sha256"]


def test_a_flipped_byte_in_an_sae_stops_its_consumers_and_store_rm_gets_it_rebuilt(fresh):
    plan, store = fresh
    sae, metrics = plan.by_name[SAE], plan.stage("sae_metrics")[0]
    before = sha(store, SAE, plan, "sae.safetensors")
    weights = store.path("sae", sae.key) / "sae.safetensors"
    flip_byte(weights, weights.stat().st_size // 2)
    with pytest.raises(DamagedArtifact) as err:
        build(metrics.spec(), store)
    msg = str(err.value)
    assert metrics.name in msg and f"artifact {SAE} (sae/{sae.key})" in msg and "sae.safetensors" in msg
    assert not store.exists("sae_metrics", metrics.key) and not store.partial_path("sae_metrics", metrics.key).exists()
    command = re.search(r"`(randsae store rm [^`]+)`", msg).group(1)
    assert command == f"randsae store rm sae/{sae.key} --store {store.root.resolve()}"
    res = subprocess.run([sys.executable, "-m", "randsae", *command.split()[1:]], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert f"removed sae/{sae.key}  {SAE}" in res.stdout
    assert not store.path("sae", sae.key).exists() and store.exists("activations", cached_activations(sae, plan).key)
    build(sae.spec(), store)  # the next run rebuilds it: the same bits, and its consumer runs
    build(metrics.spec(), store)
    assert sha(store, SAE, plan, "sae.safetensors") == before and store.verify() == []


def test_a_deleted_meta_json_is_reported_and_store_rm_removes_it_and_its_dependents(fresh, config_file, capsys):
    plan, store = fresh
    model = plan.by_name["model/tiny/trained"]
    before = sha(store, model.name, plan, "model.safetensors")
    (store.path("model", model.key) / "meta.json").unlink()
    assert not store.exists("model", model.key)  # never linked as done by the Snakefile
    acts = plan.stage("activations")[0]
    shutil.rmtree(store.path("activations", acts.key))  # so its job must read the model
    with pytest.raises(DamagedArtifact, match=f"model/{model.key}.*has no meta.json.*randsae store rm model/{model.key} --store"):
        build_group([acts.spec()], store)
    assert not store.exists("activations", acts.key)
    # dependents come from the other artifacts' meta.json: the token splits (tokenizer) and the SAE
    rc, out, _ = cli(capsys, "store", "rm", f"model/{model.key}", "--store", str(store.root), "--dry-run")
    lines = [line.split()[2] for line in out.splitlines() if line.startswith("would remove")]
    tokens = sorted(f"tokens/{a.key}" for a in plan.stage("tokens"))
    sae = f"sae/{plan.by_name[SAE].key}"  # reads the model directly (its activations are an execution choice)
    assert rc == 0 and lines[0] == sae and sorted(lines[1:4]) == tokens and lines[4:] == [f"model/{model.key}"], out
    assert store.path("model", model.key).is_dir() and all(store.exists(*t.split("/")) for t in tokens)
    assert f"model/{model.key}  (no meta.json)" in out
    # with the config, the whole plan downstream counts (the SAE reads the activations removed above)
    rc, out, _ = cli(capsys, "store", "rm", "model/tiny/trained", "--configfile", str(config_file))
    removed = [line.split()[1] for line in out.splitlines() if line.startswith("removed ")]
    assert rc == 0 and removed[0] == f"sae/{plan.by_name[SAE].key}" and removed[-1] == f"model/{model.key}"
    assert len(removed) == 5 and not any(store.path(*r.split("/")).exists() for r in removed)
    assert cli(capsys, "store", "rm", f"model/{model.key}", "--store", str(store.root))[0] == 1  # nothing left
    for a in plan.stage("model") + plan.stage("tokens"):  # the next run: everything rebuilt, same bits
        build(a.spec(), store)
    build_group([acts.spec()], store)
    assert sha(store, model.name, plan, "model.safetensors") == before and store.verify() == []


def test_rebuilding_a_broken_artifact_replaces_it(fresh):
    """What a rerun does once the Snakefile drops the link to a directory without meta.json."""
    plan, store = fresh
    tok = plan.by_name["tokens/tiny/kjv/eval"]
    before = store.meta("tokens", tok.key)["files"]
    (store.path("tokens", tok.key) / "meta.json").unlink()
    build(tok.spec(), store)
    assert store.exists("tokens", tok.key) and store.meta("tokens", tok.key)["files"] == before
    assert store.verify() == []


def test_store_rm_names_and_errors(fresh, config_file, capsys):
    plan, store = fresh
    cfgfile = config_file
    rc, _, err = cli(capsys, "store", "rm", "sae/tiny/nope", "--configfile", str(cfgfile))
    assert rc == 2 and "no artifact named 'sae/tiny/nope'" in err
    rc, out, _ = cli(capsys, "store", "rm", SAE, "--configfile", str(cfgfile))
    assert rc == 0 and out.splitlines()[0] == f"removed sae/{plan.by_name[SAE].key}  {SAE}"
    assert not store.path("sae", plan.by_name[SAE].key).exists() and store.exists("model", plan.stage("model")[0].key)
    rc, _, err = cli(capsys, "store", "rm", plan.stage("activations")[0].key, "--store", str(store.root), "--dry-run")
    assert rc == 0  # a bare key is found in the store
    nowhere = store.root.parent / "nostore"
    rc, _, err = cli(capsys, "store", "rm", SAE, "--store", str(nowhere), "--configfile", str(cfgfile))
    assert rc == 2 and "does not exist" in err and not nowhere.exists()
