"""The plan: one pure function from a normalised config to the artifacts it needs.

An artifact's key is the hash of a canonical JSON of its stage name, the stage's version,
the stage's own parameters and the keys of its inputs (the Nix model). A key therefore
depends only on what determines the artifact: a config change moves exactly the keys of
the stages it touches and of everything downstream, reverting the change brings the old
keys back, and two configs that share a prefix share its artifacts.

What each stage needs is declared by the stage itself (``STAGE.expand`` in its module of
randsae.stages); this module computes keys and orders the artifacts.

Execution settings (the config's ``execution`` section, the store location) are not
parameters: they do not change an artifact's bytes (docs/store.md, "Execution settings").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from randsae.config import Config
from randsae.stage import Artifact, Planned, PlanSoFar
from randsae.stages import stage_def, stage_defs

KEY_LENGTH = 20  # hex digits of sha256: 80 bits

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
    payload = {"stage": stage, "version": stage_def(stage).version, "params": params, "inputs": inputs}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:KEY_LENGTH]


def stage_names() -> tuple[str, ...]:
    """Every stage, inputs before consumers (the declarations in randsae.stages)."""
    return tuple(stage_defs())


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

    def get(self, stage: str, key: str) -> Artifact:
        a = self.by_key.get(key)
        if a is None or a.stage != stage:
            raise KeyError(f"no {stage} artifact with key {key} in this config's plan")
        return a

    def keys(self) -> set[str]:
        return set(self.by_key)


def _artifact(stage: str, planned: Planned) -> Artifact:
    in_keys = {role: a.key for role, a in planned.inputs.items()}
    return Artifact(
        stage=stage,
        key=artifact_key(stage, planned.params, in_keys),
        name=f"{stage}/{planned.tag}",
        version=stage_def(stage).version,
        params=planned.params,
        inputs=in_keys,
        input_stages={role: a.stage for role, a in planned.inputs.items()},
        labels=planned.labels,
    )


def build_plan(cfg: Config) -> Plan:
    """Every artifact the (normalised) config needs, with keys. Pure: no I/O.

    Each stage expands itself (its ``STAGE.expand``) from the config and the artifacts of the
    stages before it; the plan only computes keys and checks that every input has a role and
    stage the declaration names (an artifact may use a subset of the roles)."""
    so_far = PlanSoFar()
    out: list[Artifact] = []
    for name, stage in stage_defs().items():
        for planned in stage.expand(cfg, so_far):
            got = {role: a.stage for role, a in planned.inputs.items()}
            if any(stage.inputs.get(role) != s for role, s in got.items()):
                raise RuntimeError(f"stage {name} planned {planned.tag} with inputs {got}, declared {dict(stage.inputs)}")
            a = _artifact(name, planned)
            so_far.add(a)
            out.append(a)
    return Plan(out)


# ------------------------------------------------------------------------ summary
# (store size, GPU-hours and LLM cost: randsae.estimates)


def model_dims(cfg: Config, mname: str) -> tuple[int, int] | None:
    m = cfg["models"][mname]
    src = m["source"]
    ident = src.get("name") or src.get("id") or ""
    ident = ident.removesuffix("-deduped")
    dims = KNOWN_MODELS.get(ident)
    if m.get("d_model"):
        return (m["d_model"], dims[1] if dims else 0)
    return dims


def summary(plan: Plan) -> dict[str, int]:
    counts = {s: 0 for s in stage_names()}
    for a in plan:
        counts[a.stage] += 1
    return counts


def execution_settings(cfg: Config, stage: str) -> dict[str, Any]:
    """The execution settings a job of ``stage`` gets: the device and kernel choice, and the
    stage's own subsection of ``execution`` (none of them is in any key)."""
    ex = cfg["execution"]
    return {"device": ex["device"], "kernels": ex["kernels"], **ex.get(stage, {})}
