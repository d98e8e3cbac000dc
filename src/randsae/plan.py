"""The plan: one pure function from a normalised config to the artifacts it needs.

An artifact's key is the hash of a canonical JSON of its stage name, the stage's version,
the stage's own parameters and the keys of its inputs (the Nix model). A key therefore
depends only on what determines the artifact: a config change moves exactly the keys of
the stages it touches and of everything downstream, reverting the change brings the old
keys back, and two configs that share a prefix share its artifacts.

Execution settings (batch sizes, devices, store location) are not parameters: they do not
change what an artifact means.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from randsae.config import Config, as_list

#: Bump a stage's version when the meaning of its output changes; its key (and all keys
#: downstream) change with it, so old artifacts are never reused by mistake.
STAGE_VERSIONS: dict[str, int] = {
    "model": 1,
    "tokens": 1,
    "activations": 1,
    "sae": 1,
    "sae_metrics": 1,
    "latents": 1,
    "examples": 1,
    "explain": 1,
    "score": 1,
}
STAGES = tuple(STAGE_VERSIONS)

#: Stages with a runner and a Snakemake rule. The plan describes every stage; the DAG asks
#: only for these.
IMPLEMENTED_STAGES: frozenset[str] = frozenset(STAGE_VERSIONS)  # every stage runs

KEY_LENGTH = 20  # hex digits of sha256: 80 bits

SPLITS_IN_ORDER = ("eval", "interp", "train")  # carving order, see corpus docs

# Widths and depths of models the plan can estimate without loading them.
KNOWN_MODELS: dict[str, tuple[int, int]] = {
    "smollm2-135m": (576, 30),
    "EleutherAI/pythia-70m": (512, 6),
    "EleutherAI/pythia-160m": (768, 12),
    "EleutherAI/pythia-410m": (1024, 24),
    "EleutherAI/pythia-1b": (2048, 16),
    "EleutherAI/pythia-6.9b": (4096, 32),
}


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, ASCII. Same object, same bytes,
    in any process (no reliance on hash() or dict order)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def artifact_key(stage: str, params: Mapping[str, Any], inputs: Mapping[str, str]) -> str:
    payload = {"stage": stage, "version": STAGE_VERSIONS[stage], "params": params, "inputs": inputs}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:KEY_LENGTH]


@dataclass(frozen=True)
class Artifact:
    """One artifact the config needs: where it lives and what determines it."""

    stage: str
    key: str
    name: str  # human-readable, unique within a plan: sae/pythia-70m/rerandomized/L3/x64-k32/s0
    params: dict[str, Any] = field(hash=False, compare=False)
    inputs: dict[str, str] = field(hash=False, compare=False)  # role -> input key
    input_stages: dict[str, str] = field(hash=False, compare=False)  # role -> input stage

    @property
    def relpath(self) -> str:
        return f"{self.stage}/{self.key}"

    def spec(self) -> dict[str, Any]:
        """Everything a job needs to build this artifact (JSON-serialisable)."""
        return {
            "stage": self.stage,
            "version": STAGE_VERSIONS[self.stage],
            "key": self.key,
            "name": self.name,
            "params": self.params,
            "inputs": {role: f"{self.input_stages[role]}/{k}" for role, k in self.inputs.items()},
        }


class Plan:
    """All artifacts of a config, by key and by name."""

    def __init__(self, artifacts: Iterable[Artifact]):
        self.by_key: dict[str, Artifact] = {}
        self.by_name: dict[str, Artifact] = {}
        for a in artifacts:
            self.by_key.setdefault(a.key, a)  # identical params -> identical artifact
            if a.name in self.by_name and self.by_name[a.name].key != a.key:
                raise ValueError(f"two artifacts share the name {a.name}")
            self.by_name[a.name] = a

    def __iter__(self):
        return iter(self.by_key.values())

    def __len__(self) -> int:
        return len(self.by_key)

    def stage(self, stage: str) -> list[Artifact]:
        return [a for a in self if a.stage == stage]

    def implemented(self) -> list[Artifact]:
        return [a for a in self if a.stage in IMPLEMENTED_STAGES]

    def get(self, stage: str, key: str) -> Artifact:
        a = self.by_key.get(key)
        if a is None or a.stage != stage:
            raise KeyError(f"no {stage} artifact with key {key} in this config's plan")
        return a

    def keys(self) -> set[str]:
        return set(self.by_key)


class _Builder:
    """Accumulates artifacts; each add_* method mirrors one stage's dependencies."""

    def __init__(self) -> None:
        self.out: list[Artifact] = []

    def add(self, stage: str, name: str, params: dict[str, Any], inputs: Mapping[str, Artifact]) -> Artifact:
        in_keys = {role: a.key for role, a in inputs.items()}
        a = Artifact(
            stage=stage,
            key=artifact_key(stage, params, in_keys),
            name=f"{stage}/{name}",
            params=params,
            inputs=in_keys,
            input_stages={role: a.stage for role, a in inputs.items()},
        )
        self.out.append(a)
        return a


def _model_artifacts(b: _Builder, cfg: Config, mname: str, m: Mapping[str, Any]) -> dict[str, Artifact]:
    seed = cfg["seed"]
    source = dict(m["source"])
    if source["kind"] == "hub":
        source.setdefault("revision", "main")
    trained = b.add("model", f"{mname}/trained", {"variant": "trained", "source": source}, {})
    out = {"trained": trained}
    for variant in cfg["variants"]:
        if variant == "trained":
            continue
        if variant == "step0" and m["step0_revision"] is not None:
            params = {"variant": "step0", "method": "revision", "source": {**source, "revision": m["step0_revision"]}}
            out[variant] = b.add("model", f"{mname}/step0", params, {})
            continue
        params = {"variant": variant, "seed": seed}
        if variant == "step0":
            params["method"] = "init"
        if variant == "control":
            params["noise"] = "per_sequence"  # seeded per row, not per batch (docs/variants.md)
        out[variant] = b.add("model", f"{mname}/{variant}", params, {"trained": trained})
    return out


def _split_params(corpus: Mapping[str, Any], split: str) -> dict[str, Any]:
    """A split is determined by the corpus, the shuffle and the sizes of the splits carved
    before it (eval, then interp, then train): growing train never moves eval."""
    before = SPLITS_IN_ORDER[: SPLITS_IN_ORDER.index(split)]
    return {
        "corpus": corpus["source"],
        "corpus_name": corpus["name"],
        "shuffle_seed": corpus["shuffle_seed"],
        "shuffle_buffer": corpus["shuffle_buffer"] if corpus["source"]["kind"] == "hf" else None,
        "max_doc_chars": corpus["max_doc_chars"],
        "split": split,
        "layout": {s: corpus["splits"][s] for s in (*before, split)},
    }


def _llm_params(ai: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters of explain/score: explainer, client and the model of *that* client only, so
    editing the other client's model reruns nothing."""
    anthropic = ai["client"] == "anthropic"
    return {"explainer": ai["explainer"], "client": ai["client"],
            "anthropic_model": ai["anthropic_model"] if anthropic else None,
            "local_model": None if anthropic else ai["local_model"]}


def _sae_grid(cfg: Config) -> list[tuple[int, int, int]]:
    s = cfg["sae"]
    return [(x, k, seed) for x in as_list(s["expansion"]) for k in as_list(s["k"]) for seed in s["seeds"]]


def _sae_params(cfg: Config, expansion: int, k: int, seed: int) -> dict[str, Any]:
    s = cfg["sae"]
    fixed = {key: v for key, v in s.items() if key not in ("expansion", "k", "seeds", "checkpoint_every_steps")}
    return {**fixed, "expansion": expansion, "k": k, "seed": seed}


def build_plan(cfg: Config) -> Plan:
    """Every artifact the (normalised) config needs, with keys. Pure: no I/O."""
    b = _Builder()
    corpus = cfg["corpus"]
    ai = cfg["autointerp"]
    for mname, m in cfg["models"].items():
        models = _model_artifacts(b, cfg, mname, m)
        tokens = {
            split: b.add("tokens", f"{mname}/{corpus['name']}/{split}", _split_params(corpus, split), {"model": models["trained"]})
            for split in SPLITS_IN_ORDER
        }
        for variant in cfg["variants"]:
            model = models[variant]
            for layer in m["layers"]:
                act_params = {"layer": layer, "dtype": cfg["activations"]["dtype"], "model_dtype": m["dtype"], "drop_first_position": cfg["activations"]["drop_first_position"]}
                acts = b.add("activations", f"{mname}/{variant}/L{layer}", act_params, {"model": model, "tokens": tokens["train"]})
                for expansion, k, seed in _sae_grid(cfg):
                    tag = f"{mname}/{variant}/L{layer}/x{expansion}-k{k}/s{seed}"
                    sae = b.add("sae", tag, _sae_params(cfg, expansion, k, seed), {"activations": acts})
                    where = {"layer": layer, "model_dtype": m["dtype"], "drop_first_position": act_params["drop_first_position"]}
                    b.add("sae_metrics", tag, {**where, "max_tokens": cfg["metrics"]["max_tokens"], "variant": variant}, {"model": model, "sae": sae, "tokens": tokens["eval"]})
                    latents = b.add("latents", tag, where, {"model": model, "sae": sae, "tokens": tokens["interp"]})
                    ex_params = {k2: ai[k2] for k2 in ("n_latents", "min_activations", "window", "explainer_examples", "explainer_sampling", "test_examples", "n_quantiles", "non_activating", "seed")}
                    examples = b.add("examples", tag, ex_params, {"latents": latents, "tokens": tokens["interp"], "tokenizer": models["trained"]})
                    llm = _llm_params(ai)
                    explain = b.add("explain", tag, llm, {"examples": examples})
                    for scorer in ai["scorers"]:
                        b.add("score", f"{tag}/{scorer}", {**llm, "scorer": scorer, "examples_per_prompt": ai["examples_per_prompt"], "seed": ai["seed"]}, {"explain": explain, "examples": examples})
    return Plan(b.out)


# ------------------------------------------------------------------------ summary / estimate


def model_dims(cfg: Config, mname: str) -> tuple[int, int] | None:
    m = cfg["models"][mname]
    src = m["source"]
    ident = src.get("name") or src.get("id") or ""
    ident = ident.removesuffix("-deduped")
    dims = KNOWN_MODELS.get(ident)
    if m.get("d_model"):
        return (m["d_model"], dims[1] if dims else 0)
    return dims


def estimate_bytes(cfg: Config) -> dict[str, int | None]:
    """Disk estimate for the two big artifact families. None where a model width is unknown
    (set models.<name>.d_model)."""
    bytes_per = {"bfloat16": 2, "float16": 2, "float32": 4}[cfg["activations"]["dtype"]]
    splits = cfg["corpus"]["splits"]
    n_saes_per_layer = len(_sae_grid(cfg))
    acts: int | None = 0
    latents = 0
    for mname, m in cfg["models"].items():
        dims = model_dims(cfg, mname)
        n = len(cfg["variants"]) * len(m["layers"])
        if dims is None or acts is None:
            acts = None
        else:
            acts += n * splits["train"]["tokens"] * dims[0] * bytes_per
        ks = as_list(cfg["sae"]["k"])
        latents += n * n_saes_per_layer * splits["interp"]["tokens"] * max(ks) * (4 + 2)
    return {"activations": acts, "latents": latents}


def summary(plan: Plan) -> dict[str, int]:
    counts = {s: 0 for s in STAGES}
    for a in plan:
        counts[a.stage] += 1
    return counts
