"""The plan catches what it can know (randsae issue 15): each check is a ConfigError line
naming its key, from ``randsae plan`` and from the Snakefile's parse, before any job runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _helpers import tiny_config

from randsae.checks import check_plan, model_shape, plan_problems, preflight
from randsae.config import ConfigError, normalise

REPO = Path(__file__).resolve().parents[1]
KEY = {"ANTHROPIC_API_KEY": "sk-test-not-a-real-key"}


def model_dir(d: Path, n_layers: int = 3, width: int = 32) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"num_hidden_layers": n_layers, "hidden_size": width}))
    (d / "model.safetensors").write_bytes(b"w")
    return d


def problems(cfg: dict, tmp_path: Path, env=None) -> list[str]:
    try:
        preflight(normalise(cfg, env={}), env={} if env is None else env, base=tmp_path)
    except ConfigError as e:
        return str(e).splitlines()[1:]
    return []


@pytest.fixture
def cfg(tmp_path):
    return tiny_config(model_dir(tmp_path / "m"), tmp_path / "s")


def test_a_good_config_passes(cfg, tmp_path):
    assert problems(cfg, tmp_path) == []


def test_layer_past_the_depth_of_a_local_model(cfg, tmp_path):
    cfg["models"]["tiny"]["layers"] = [0, 3, 7]
    got = problems(cfg, tmp_path)
    assert got == ["  models.tiny.layers[1]: 3 is past the last block (the model has 3 blocks, 0..2)",
                   "  models.tiny.layers[2]: 7 is past the last block (the model has 3 blocks, 0..2)"]


def test_layer_past_the_depth_of_a_known_model(tmp_path):
    cfg = tiny_config("unused", tmp_path / "s")
    cfg["models"]["tiny"] = {"source": {"kind": "hub", "id": "EleutherAI/pythia-70m-deduped"}, "layers": [5, 6]}
    assert "models.tiny.layers[1]: 6 is past the last block (the model has 6 blocks, 0..5)" in "\n".join(problems(cfg, tmp_path))
    assert model_shape(normalise(cfg, env={})["models"]["tiny"]) == (512, 6)


def test_an_unknown_model_is_not_checked(tmp_path):
    cfg = tiny_config("unused", tmp_path / "s")
    cfg["models"]["tiny"] = {"source": {"kind": "hub", "id": "someone/unknown"}, "layers": [99]}
    cfg["sae"]["k"] = 10_000
    assert problems(cfg, tmp_path) == []


def test_k_at_least_the_number_of_latents(cfg, tmp_path):
    cfg["sae"]["k"] = [4, 64]  # expansion 2 x width 32 = 64 latents
    assert problems(cfg, tmp_path) == [
        "  sae.k[1]: 64 is not below the number of latents of models.tiny with sae.expansion 2 (2 x d_model 32 = 64)"]
    cfg["sae"]["k"] = 63
    assert problems(cfg, tmp_path) == []


def test_d_model_given_in_the_config_is_used(tmp_path):
    cfg = tiny_config("unused", tmp_path / "s")
    cfg["models"]["tiny"] = {"source": {"kind": "hub", "id": "someone/unknown"}, "layers": [1], "d_model": 8}
    assert "sae.k: 16 is not below the number of latents" in "\n".join(problems({**cfg, "sae": {"expansion": 2, "k": 16}}, tmp_path))


def test_a_split_shorter_than_one_sequence(cfg, tmp_path):
    cfg["corpus"]["splits"]["eval"] = {"tokens": 63, "ctx_len": 64}
    assert problems(cfg, tmp_path) == ["  corpus.splits.eval.tokens: 63 is less than one sequence of "
                                       "corpus.splits.eval.ctx_len = 64 tokens; ask for at least 64"]


def test_window_longer_than_the_interp_sequences(cfg, tmp_path):
    cfg["autointerp"]["window"] = 33  # interp ctx_len is 32
    assert problems(cfg, tmp_path) == ["  autointerp.window: 33 is longer than corpus.splits.interp.ctx_len = 32 "
                                       "(a window never crosses a sequence, so it would be cut to 32 tokens)"]


def test_anthropic_without_its_key_and_the_key_is_never_shown(cfg, tmp_path):
    cfg["autointerp"]["client"] = "anthropic"
    assert problems(cfg, tmp_path) == ["  autointerp.client: 'anthropic' needs ANTHROPIC_API_KEY in the environment, "
                                       "and it is not set; export it, or set autointerp.client: local"]
    assert problems(cfg, tmp_path, env=KEY) == []
    cfg["models"]["tiny"]["layers"] = [9]  # another problem, with the key set
    got = "\n".join(problems(cfg, tmp_path, env=KEY))
    assert "layers[0]" in got and KEY["ANTHROPIC_API_KEY"] not in got


def test_step0_revision_of_a_source_without_revisions(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    cfg = tiny_config(tmp_path, tmp_path / "s")
    cfg["models"]["tiny"] = {"source": {"kind": "gguf", "path": str(gguf)}, "layers": [0], "step0_revision": "step0"}
    assert problems(cfg, tmp_path) == ["  models.tiny.step0_revision: a gguf source has no revisions; use null "
                                       "(the architecture's initialiser)"]


def test_missing_files_and_plan_problems_are_listed_together(cfg, tmp_path):
    cfg["corpus"]["source"] = {"kind": "files", "paths": ["nope.jsonl"], "format": "jsonl"}
    cfg["models"]["tiny"]["layers"] = [5]
    got = problems(cfg, tmp_path)
    assert len(got) == 2 and "corpus.source.paths[0]: file" in got[0] and "models.tiny.layers[0]: 5" in got[1]


def test_check_plan_takes_a_pinned_config(cfg, tmp_path):
    pinned = preflight(normalise(cfg, env={}), env={}, base=tmp_path)
    pinned["sae"]["k"] = 64
    assert len(plan_problems(pinned, env={})) == 1
    with pytest.raises(ConfigError, match=r"sae\.k: 64 is not below"):
        check_plan(pinned, env={})


def _write(tmp_path: Path, cfg: dict, name: str = "bad.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_randsae_plan_rejects_before_any_job(cfg, tmp_path):
    cfg["models"]["tiny"]["layers"] = [7]
    res = subprocess.run([sys.executable, "-m", "randsae", "plan", "--configfile", str(_write(tmp_path, cfg))],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2
    assert "models.tiny.layers[0]: 7 is past the last block (the model has 3 blocks, 0..2)" in res.stderr
    assert "Traceback" not in res.stderr
    dup = tmp_path / "dup.yaml"
    dup.write_text(_write(tmp_path, tiny_config(tmp_path / "m", tmp_path / "s")).read_text() + "seed: 3\n")
    res = subprocess.run([sys.executable, "-m", "randsae", "plan", "--configfile", str(dup)], capture_output=True, text=True)
    assert res.returncode == 2 and "seed: duplicate key" in res.stderr


@pytest.mark.slow
def test_the_snakefile_parse_rejects_before_any_job(cfg, tmp_path):
    cfg["models"]["tiny"]["layers"] = [7]
    wd = tmp_path / "wd"
    wd.mkdir()

    def dry_run(configfile: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(wd), "-n",
                               "--configfile", str(configfile)], capture_output=True, text=True, timeout=300)

    res = dry_run(_write(tmp_path, cfg))
    assert res.returncode != 0 and "models.tiny.layers[0]: 7 is past the last block" in res.stdout + res.stderr
    good = _write(tmp_path, tiny_config(tmp_path / "m", tmp_path / "s"), "good.yaml")
    dup = tmp_path / "dup.yaml"
    dup.write_text(good.read_text().replace("seed: 0\n", "seed: 0\nseed: 1\n"))
    res = dry_run(dup)
    assert res.returncode != 0 and "seed: duplicate key (lines" in res.stdout + res.stderr
    assert not (wd / ".randsae").exists()  # no job ran, nothing linked
