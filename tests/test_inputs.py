"""Keys cover contents, not names (randsae issue 15): a ``files`` corpus, a ``local`` model and
a ``gguf`` model are pinned to content fingerprints. Same files under another path give the
same key; other files under the same path give another key; editing in place rebuilds."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _helpers import tiny_config

from randsae import zarr_io
from randsae.config import CONFIG_DIR, ConfigError, load_config, normalise
from randsae.corpus import CorpusError, _packaged_kjv
from randsae.inputs import pin, pin_inputs, split_location
from randsae.plan import build_plan
from randsae.stages import build
from randsae.store import Store


def fake_model(d: Path, weights: bytes = b"weights") -> Path:
    """A directory laid out like a Hub checkpoint (pinning reads bytes, never loads them)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"num_hidden_layers": 3, "hidden_size": 32}))
    (d / "model.safetensors").write_bytes(weights)
    return d


def jsonl(path: Path, docs: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def files_config(model: str | Path, store: Path, paths: list[str], **over) -> dict:
    """tiny_config on a files corpus. The judge is the packaged model: a path in
    autointerp.local_model is not pinned (it stays in the explain and score keys as written)."""
    return tiny_config(model, store, **{"corpus.name": "c", "corpus.source": {"kind": "files", "paths": paths, "format": "jsonl"},
                                        "autointerp.local_model": "smollm2-135m", **over})


def keys(cfg: dict, base: Path) -> dict[str, str]:
    return {a.name: a.key for a in build_plan(pin_inputs(normalise(cfg), base=base))}


def stage_keys(k: dict[str, str], prefix: str) -> dict[str, str]:
    return {n: v for n, v in k.items() if n.startswith(prefix)}


@pytest.fixture
def world(tmp_path):
    """Two working directories on one store, each with its own data/c.jsonl, and one model."""
    model = fake_model(tmp_path / "models" / "tiny")
    wd1, wd2 = tmp_path / "wd1", tmp_path / "wd2"
    jsonl(wd1 / "data" / "c.jsonl", ["first corpus", "one more"])
    jsonl(wd2 / "data" / "c.jsonl", ["another corpus entirely"])
    return model, wd1, wd2, tmp_path / "store"


def test_same_relative_path_with_other_files_gives_other_tokens_keys(world):
    model, wd1, wd2, store = world
    cfg = files_config(model, store, ["data/c.jsonl"])
    k1, k2 = keys(cfg, wd1), keys(cfg, wd2)
    assert stage_keys(k1, "model/") == stage_keys(k2, "model/")
    tok1, tok2 = stage_keys(k1, "tokens/"), stage_keys(k2, "tokens/")
    assert tok1 and all(tok1[n] != tok2[n] for n in tok1)


def test_same_files_under_another_path_give_the_same_keys(world, tmp_path):
    model, wd1, _, store = world
    base = keys(files_config(model, store, ["data/c.jsonl"]), wd1)
    # the same bytes elsewhere, written as another relative path, and the model copied too
    other = tmp_path / "elsewhere"
    shutil.copy(wd1 / "data" / "c.jsonl", jsonl(other / "x" / "renamed.jsonl", []))
    model_copy = shutil.copytree(model, tmp_path / "copy-of-model")
    moved = keys(files_config(Path("..") / model_copy.name, store, ["x/../x/renamed.jsonl"]), other)
    assert moved == base
    absolute = keys(files_config(model, store, [str(wd1 / "data" / "c.jsonl")]), tmp_path)
    assert absolute == base


def test_editing_in_place_moves_the_keys_and_reverting_restores_them(world):
    model, wd1, _, store = world
    cfg = files_config(model, store, ["data/c.jsonl"])
    before = keys(cfg, wd1)
    f = wd1 / "data" / "c.jsonl"
    saved = f.read_bytes()
    f.write_bytes(saved.replace(b"first", b"FIRST"))
    edited = keys(cfg, wd1)
    assert all(edited[n] != before[n] for n in stage_keys(before, "tokens/"))
    assert stage_keys(edited, "model/") == stage_keys(before, "model/")
    (model / "model.safetensors").write_bytes(b"retrained")
    retrained = keys(cfg, wd1)
    assert all(retrained[n] != edited[n] for n in edited)  # the model feeds every stage
    f.write_bytes(saved)
    (model / "model.safetensors").write_bytes(b"weights")
    assert keys(cfg, wd1) == before


def test_gguf_key_follows_the_file_bytes(tmp_path):
    g = tmp_path / "a" / "m.gguf"
    g.parent.mkdir()
    g.write_bytes(b"GGUF fake bytes")
    copy_ = tmp_path / "b" / "other-name.gguf"
    copy_.parent.mkdir()
    copy_.write_bytes(g.read_bytes())
    cfg = tiny_config("unused", tmp_path / "s", **{"autointerp.local_model": "smollm2-135m"})
    cfg["models"]["tiny"]["source"] = {"kind": "gguf", "path": "a/m.gguf"}
    base = keys(cfg, tmp_path)
    cfg2 = copy.deepcopy(cfg)
    cfg2["models"]["tiny"]["source"]["path"] = str(copy_)
    assert keys(cfg2, tmp_path) == base
    copy_.write_bytes(b"GGUF other bytes")
    assert stage_keys(keys(cfg2, tmp_path), "model/") != stage_keys(base, "model/")


def test_step0_revision_has_its_own_fingerprint(tmp_path):
    model = fake_model(tmp_path / "m")
    fake_model(model / "step0", b"init weights")
    cfg = tiny_config(model, tmp_path / "s", variants=["trained", "step0"])
    cfg["models"]["tiny"]["step0_revision"] = "step0"
    base = keys(cfg, tmp_path)
    (model / "step0" / "model.safetensors").write_bytes(b"another init")
    after = keys(cfg, tmp_path)
    assert after["model/tiny/trained"] == base["model/tiny/trained"]
    assert after["model/tiny/step0"] != base["model/tiny/step0"]


def test_pinned_params_hold_the_fingerprint_and_the_labels_the_path(world):
    model, wd1, _, store = world
    cfg = pin_inputs(normalise(files_config(model, store, ["data/c.jsonl"])), base=wd1)
    plan = build_plan(cfg)
    trained = plan.by_name["model/tiny/trained"]
    assert trained.params["source"] == {"kind": "local", "fingerprint": cfg["models"]["tiny"]["source"]["fingerprint"]}
    assert trained.labels["location"] == {"path": str(model.resolve())}
    tokens = plan.by_name["tokens/tiny/c/eval"]
    assert "paths" not in tokens.params["corpus"] and tokens.params["corpus"]["fingerprint"].startswith("sha256:")
    assert tokens.labels["location"] == {"paths": [str((wd1 / "data" / "c.jsonl").resolve())]}
    assert tokens.params["shuffle_buffer"] == 100_000  # corpus.shuffle_buffer applies to files
    assert normalise(cfg) == cfg  # a pinned config re-normalises to itself (the aggregate rule passes it on)
    assert split_location({"kind": "hub", "id": "x"}) == ({"kind": "hub", "id": "x"}, {})


def test_packaged_and_hub_sources_are_left_as_they_are(tmp_path):
    cfg = load_config(CONFIG_DIR / "config.yaml")
    pinned = pin_inputs(cfg, base=tmp_path)
    assert pinned == cfg
    assert [a.key for a in build_plan(pinned)] == [a.key for a in build_plan(cfg)]
    paper = load_config(CONFIG_DIR / "paper.yaml")
    assert pin_inputs(paper, base=tmp_path) == paper
    assert not (tmp_path / "store").exists()  # nothing hashed, no memo written


def test_missing_inputs_are_named_by_key_path(tmp_path):
    (tmp_path / "adir").mkdir()
    (tmp_path / "f.gguf").write_bytes(b"x")
    fake_model(tmp_path / "noconfig").joinpath("config.json").unlink()
    cfg = tiny_config(tmp_path / "nope", tmp_path / "s")
    cfg["models"]["g"] = {"source": {"kind": "gguf", "path": "missing.gguf"}, "layers": [0]}
    cfg["models"]["gd"] = {"source": {"kind": "gguf", "path": "adir"}, "layers": [0]}
    cfg["models"]["lf"] = {"source": {"kind": "local", "path": "f.gguf"}, "layers": [0]}
    cfg["models"]["nc"] = {"source": {"kind": "local", "path": "noconfig"}, "layers": [0]}
    cfg["corpus"]["source"] = {"kind": "files", "paths": ["adir", "gone.txt"], "format": "text"}
    problems = pin(normalise(cfg), base=tmp_path).problems
    text = "\n".join(problems)
    assert f"models.tiny.source.path: local model directory {tmp_path / 'nope'} does not exist" in text
    assert f"models.g.source.path: GGUF file {tmp_path / 'missing.gguf'} does not exist" in text
    assert "models.gd.source.path: " in text and "is a directory; kind gguf takes a .gguf file" in text
    assert "models.lf.source.path: " in text and "is a file; kind local takes a directory" in text
    assert "models.nc.source: " in text and "has no config.json" in text
    assert f"corpus.source.paths[0]: {tmp_path / 'adir'} is a directory" in text
    assert f"corpus.source.paths[1]: file {tmp_path / 'gone.txt'} does not exist" in text
    assert len(problems) == 7
    with pytest.raises(ConfigError, match="invalid config"):
        pin_inputs(normalise(cfg), base=tmp_path)


# ------------------------------------------------------------------ real builds from pinned inputs


def test_each_working_directory_builds_its_own_tokens(tmp_path, tiny_model_dir):
    """The reproduction of issue 15: two working directories, one store, data/c.jsonl with
    different documents. Before, the second run reused the first's tokens."""
    chapters = _packaged_kjv()
    store = Store(tmp_path / "store")
    got = {}
    for wd, docs in ((tmp_path / "wd1", chapters[:40]), (tmp_path / "wd2", chapters[40:80])):
        jsonl(wd / "data" / "c.jsonl", docs)
        cfg = pin_inputs(normalise(files_config(tiny_model_dir, store.root, ["data/c.jsonl"])), base=wd)
        plan = build_plan(cfg)
        build(plan.by_name["model/tiny/trained"].spec(), store)  # the model stage reads its path from the labels
        eval_ = plan.by_name["tokens/tiny/c/eval"]
        build(eval_.spec(), store)
        got[wd.name] = (eval_.key, zarr_io.open_array(store.path("tokens", eval_.key) / "tokens.zarr")[:])
    (k1, t1), (k2, t2) = got["wd1"], got["wd2"]
    assert k1 != k2 and t1.shape == t2.shape and not np.array_equal(t1, t2)
    variant = json.loads((store.path("model", plan.by_name["model/tiny/trained"].key) / "variant.json").read_text())
    assert variant["source"]["fingerprint"] == cfg["models"]["tiny"]["source"]["fingerprint"]


def test_an_empty_corpus_says_so(tmp_path, tiny_model_dir):
    jsonl(tmp_path / "empty.jsonl", ["", "   "])
    store = Store(tmp_path / "store")
    cfg = pin_inputs(normalise(files_config(tiny_model_dir, store.root, ["empty.jsonl"])), base=tmp_path)
    plan = build_plan(cfg)
    build(plan.by_name["model/tiny/trained"].spec(), store)
    with pytest.raises(CorpusError, match="has no usable document \\(read 2: 2 empty") as e:
        build(plan.by_name["tokens/tiny/c/eval"].spec(), store)
    assert "fewer tokens" not in str(e.value)


def _age_tree(d: Path) -> None:
    """mtimes a minute in the past: files the memo trusts (see fingerprint.FRESH_SECONDS)."""
    import os

    for p in d.rglob("*"):
        st = p.stat()
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns - 60_000_000_000))


def test_the_memo_lives_in_the_store_and_never_in_a_foreign_folder(tmp_path):
    model = fake_model(tmp_path / "m")
    _age_tree(model)
    cfg = normalise(tiny_config(model, "store"))
    pin_inputs(cfg, base=tmp_path)
    assert Store(tmp_path / "store").is_store()  # created and marked to hold the memo
    memo = json.loads((tmp_path / "store" / ".fingerprints.json").read_text())
    assert set(memo) == {str((model / "config.json").resolve()), str((model / "model.safetensors").resolve())}
    foreign = tmp_path / "not-a-store"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    pinned = pin_inputs(normalise(tiny_config(model, foreign)), base=tmp_path)
    assert pinned["models"]["tiny"]["source"]["fingerprint"].startswith("sha256:")
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_a_bad_corpus_file_fails_the_job_without_a_traceback(tmp_path, tiny_model_dir):
    import subprocess
    import sys

    from randsae.plan import canonical_json

    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e".encode("latin-1"))
    store = Store(tmp_path / "store")
    cfg = normalise(files_config(tiny_model_dir, store.root, ["latin1.txt"]))
    cfg["corpus"]["source"]["format"] = "text"
    plan = build_plan(pin_inputs(cfg, base=tmp_path))
    build(plan.by_name["model/tiny/trained"].spec(), store)
    spec = canonical_json(plan.by_name["tokens/tiny/c/eval"].spec())
    res = subprocess.run([sys.executable, "-m", "randsae", "build", "--spec", spec, "--store", str(store.root)],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert f"randsae: {bad.resolve()}: 4 of the 17 bytes read (24%) are not UTF-8 text" in res.stderr
    assert "Traceback" not in res.stderr
