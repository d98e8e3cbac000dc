"""The whole Snakefile on a tiny config: a complete run, a second run with nothing to do,
an edit that reruns exactly the affected jobs, a revert that runs nothing, and a dry run
of the SLURM profile."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _helpers import tiny_config

from randsae.store import Store

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]

pytestmark = pytest.mark.slow

DOWNSTREAM_OF_EXAMPLES = {"explain": 2, "score": 2}  # one job per variant (both scorers in it)
DOWNSTREAM_OF_SAE = {"sae": 2, "sae_metrics": 2, "latents": 2, "examples": 2, **DOWNSTREAM_OF_EXAMPLES}
# jobs per variant-layer below the activations: one pass, one SAE, one metrics row (x2 variants)
DOWNSTREAM_OF_ACTS = {"activations": 2, **DOWNSTREAM_OF_SAE}


def snakemake(workdir: Path, config: dict, *args: str, profile: str = "local") -> str:
    cfgfile = workdir / "config.yaml"
    cfgfile.write_text(yaml.safe_dump(config))
    cmd = [*SNAKEMAKE, "-d", str(workdir), "--profile", str(REPO / "profiles" / profile),
           "--configfile", str(cfgfile), *args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    return out


def planned_jobs(output: str) -> dict[str, int]:
    """Per-rule counts from a dry run's "Job stats" table; {} when nothing is to be done."""
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:")[1]
    counts: dict[str, int] = {}
    for rule, n in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M):
        family = re.sub(r"_[0-9a-f]{10}$", "", rule)  # generated per-group rules
        if family not in ("total", "all", "aggregate"):  # aggregate follows any change; checked below
            counts[family] = counts.get(family, 0) + int(n)
    return counts


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_dir):
    wd = tmp_path_factory.mktemp("dag")
    cfg = tiny_config(tiny_model_dir, wd / "store")
    snakemake(wd, cfg, "--cores", "2")
    return wd, cfg


def test_complete_run_then_nothing_to_do(built):
    wd, cfg = built
    store = Store(wd / "store")
    assert len(list(store.iter_meta("model"))) == 2 and len(list(store.iter_meta("tokens"))) == 3
    assert len(list(store.iter_meta("activations"))) == 2
    for stage in ("sae", "sae_metrics", "latents", "examples", "explain"):
        assert len(list(store.iter_meta(stage))) == 2, stage
    assert len(list(store.iter_meta("score"))) == 4
    assert store.verify() == []
    results = Path(cfg["results"])
    assert (results / "report.html").is_file() and (results / "results.duckdb").is_file()
    assert planned_jobs(snakemake(wd, cfg, "-n")) == {}
    out = snakemake(wd, cfg, "--cores", "1")  # a real no-op run
    assert "Nothing to be done" in out


def test_fresh_working_directory_on_a_full_store_runs_no_jobs(built, tmp_path):
    """Another working directory (say, a second experiment folder) with the same config and
    store: every artifact is linked when the workflow is parsed, so no stage job is planned."""
    wd, cfg = built
    cfg = {**cfg, "results": str(tmp_path / "results")}  # its own results: only aggregate runs
    out = snakemake(tmp_path, cfg, "-n")
    assert planned_jobs(out) == {} and re.search(r"^aggregate\s+1$", out, flags=re.M), out[-3000:]
    links = sorted((tmp_path / ".randsae" / "links").glob("*/*"))
    assert len(links) == len(list(Store(cfg["store"]).iter_meta()))
    assert all(p.is_symlink() and p.resolve() == (Path(cfg["store"]) / p.parent.name / p.name).resolve() for p in links)


def test_corpus_edit_reruns_exactly_the_affected_jobs_and_revert_runs_none(built):
    wd, cfg = built
    edited = yaml.safe_load(yaml.safe_dump(cfg))
    edited["corpus"]["splits"]["train"]["tokens"] = 4096  # only the train split depends on it
    assert planned_jobs(snakemake(wd, edited, "-n")) == {"tokens": 1, **DOWNSTREAM_OF_ACTS}
    edited["corpus"]["shuffle_seed"] = 1  # every split depends on the shuffle
    assert planned_jobs(snakemake(wd, edited, "-n")) == {"tokens": 3, **DOWNSTREAM_OF_ACTS}
    edited["corpus"]["shuffle_seed"] = 0
    snakemake(wd, edited, "--cores", "2")  # build the edit for real ...
    assert planned_jobs(snakemake(wd, cfg, "-n")) == {}  # ... and the original is still there


def test_variant_edit_reruns_only_that_model(built):
    wd, cfg = built
    edited = yaml.safe_load(yaml.safe_dump(cfg))
    edited["variants"] = ["trained", "rerandomized", "control"]
    assert planned_jobs(snakemake(wd, edited, "-n")) == {"model": 1, "activations": 1, "sae": 1, "sae_metrics": 1, "latents": 1, "examples": 1, "explain": 1, "score": 1}
    edited["seed"] = 3  # seeded variants only; trained and the tokenizer-bound tokens stay
    assert planned_jobs(snakemake(wd, edited, "-n")) == {"model": 2, **DOWNSTREAM_OF_ACTS}


def test_adding_a_layer_runs_only_that_layers_jobs(built):
    wd, cfg = built
    edited = yaml.safe_load(yaml.safe_dump(cfg))
    edited["models"]["tiny"]["layers"] = [1, 2]
    out = snakemake(wd, edited, "-n")
    assert planned_jobs(out) == DOWNSTREAM_OF_ACTS  # one pass per variant ...
    planned_outputs = set(re.findall(r"output: (store/activations/\w+|\S+/activations/\w+)", out))
    built_keys = {m["key"] for m in Store(wd / "store").iter_meta("activations")}
    assert len(planned_outputs) == 2 and not any(p.rsplit("/", 1)[1] in built_keys for p in planned_outputs)  # ... for L2 only


def test_slurm_profile_plans_the_dag(built, tmp_path, tiny_model_dir):
    cfg = tiny_config(tiny_model_dir, tmp_path / "store")
    counts = planned_jobs(snakemake(tmp_path, cfg, "-n", profile="slurm"))
    assert counts == {"model": 2, "tokens": 3, **DOWNSTREAM_OF_ACTS}


def test_sae_edit_reuses_activations(built):
    wd, cfg = built
    edited = yaml.safe_load(yaml.safe_dump(cfg))
    edited["sae"]["k"] = 8
    assert planned_jobs(snakemake(wd, edited, "-n")) == DOWNSTREAM_OF_SAE
    edited["metrics"] = {"max_tokens": 1024}
    assert planned_jobs(snakemake(wd, edited, "-n")) == DOWNSTREAM_OF_SAE
    edited = yaml.safe_load(yaml.safe_dump(cfg))
    edited["metrics"] = {"max_tokens": 1024}  # metrics alone
    assert planned_jobs(snakemake(wd, edited, "-n")) == {"sae_metrics": 2}
    edited = yaml.safe_load(yaml.safe_dump(cfg))
    edited["autointerp"]["n_latents"] = 1  # example sampling alone
    assert planned_jobs(snakemake(wd, edited, "-n")) == {"examples": 2, **DOWNSTREAM_OF_EXAMPLES}
    edited = yaml.safe_load(yaml.safe_dump(cfg))
    edited["autointerp"]["explainer"] = "llm"  # the explainer alone: explain, score, aggregate
    out = snakemake(wd, edited, "-n")
    assert planned_jobs(out) == DOWNSTREAM_OF_EXAMPLES
    assert re.search(r"^aggregate\s+1$", out, flags=re.M)
    edited["autointerp"]["explainer"] = "token_list"  # reverted
    assert planned_jobs(snakemake(wd, edited, "-n")) == {}
    assert planned_jobs(snakemake(wd, cfg, "-n")) == {}


def test_the_saes_of_one_hookpoint_share_one_metrics_job(built):
    """Two new seeds per (variant, layer): one sae_metrics job per hookpoint, whose inputs are
    both SAEs (so Snakemake waits for both) and whose outputs are both metrics artifacts."""
    wd, cfg = built
    edited = yaml.safe_load(yaml.safe_dump(cfg))
    edited["sae"]["seeds"] = [1, 2]
    out = snakemake(wd, edited, "-n")
    assert planned_jobs(out)["sae_metrics"] == 2  # 2 variants x 1 layer, not 4 SAEs
    jobs = re.findall(r"^rule sae_metrics_[0-9a-f]{10}:\n((?:\s+\S.*\n)+)", out, flags=re.M)
    assert len(jobs) == 2, out[-3000:]
    for body in jobs:
        inputs = re.search(r"^\s+input: (.*)$", body, flags=re.M).group(1)
        outputs = re.search(r"^\s+output: (.*)$", body, flags=re.M).group(1)
        assert len(re.findall(r"/sae/\w+", inputs)) == 2, body
        assert len(re.findall(r"/sae_metrics/\w+", outputs)) == 2, body
