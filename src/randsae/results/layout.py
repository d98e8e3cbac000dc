"""Which artifacts belong to which SAE: the plan, read as one row per SAE.

Every per-SAE artifact family (sae_metrics, latents, examples, explain, score) shares the SAE's
name suffix ``<model>/<variant>/L<layer>/x<expansion>-k<k>/s<seed>`` (score adds
``/<scorer>``), so the SAE's identifying columns are attached to each file by name, from the
plan, never parsed out of the files themselves: a file only holds what its stage measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from randsae.plan import Artifact, Plan
from randsae.store import Store

#: Columns that identify an SAE in every results table, in this order.
ID_COLUMNS: tuple[str, ...] = ("sae_key", "model", "variant", "layer", "expansion", "k", "seed")
ID_TYPES: dict[str, str] = {
    "sae_key": "VARCHAR",
    "model": "VARCHAR",
    "variant": "VARCHAR",
    "layer": "INTEGER",
    "expansion": "INTEGER",
    "k": "INTEGER",
    "seed": "INTEGER",
}


@dataclass(frozen=True)
class SaeUnit:
    """One SAE of the plan and the keys of the artifacts measured from it."""

    sae: Artifact
    tag: str  # <model>/<variant>/L<layer>/x<expansion>-k<k>/s<seed>
    model: str
    variant: str
    layer: int
    expansion: int
    k: int
    seed: int
    related: dict[str, Artifact] = field(hash=False, compare=False)  # stage -> artifact
    scores: dict[str, Artifact] = field(hash=False, compare=False)  # scorer -> score artifact

    def ids(self) -> dict[str, Any]:
        return {
            "sae_key": self.sae.key,
            "model": self.model,
            "variant": self.variant,
            "layer": self.layer,
            "expansion": self.expansion,
            "k": self.k,
            "seed": self.seed,
        }


def _layer(plan: Plan, sae: Artifact) -> int:
    acts = plan.get("activations", sae.inputs["activations"])
    return int(acts.params["layer"])


def sae_units(plan: Plan) -> list[SaeUnit]:
    """Every SAE of the plan, in plan order, with its related artifacts."""
    units = []
    scores_by_tag: dict[str, dict[str, Artifact]] = {}
    for name, art in plan.by_name.items():
        if art.stage == "score":  # score/<tag>/<scorer>
            scores_by_tag.setdefault(name.removeprefix("score/").rsplit("/", 1)[0], {})[art.params["scorer"]] = art
    for sae in plan.stage("sae"):
        tag = sae.name.removeprefix("sae/")
        model, variant = tag.split("/")[:2]
        related = {}
        for stage in ("sae_metrics", "latents", "examples", "explain"):
            a = plan.by_name.get(f"{stage}/{tag}")
            if a is not None:
                related[stage] = a
        scores = scores_by_tag.get(tag, {})
        units.append(
            SaeUnit(
                sae=sae,
                tag=tag,
                model=model,
                variant=variant,
                layer=_layer(plan, sae),
                expansion=int(sae.params["expansion"]),
                k=int(sae.params["k"]),
                seed=int(sae.params["seed"]),
                related=related,
                scores=scores,
            )
        )
    return units


@dataclass(frozen=True)
class FileRef:
    """One per-artifact file and the identifying columns its rows get."""

    path: Path
    ids: dict[str, Any]


def file_refs(units: list[SaeUnit], store: Store, stage: str, filename: str) -> list[FileRef]:
    """The files ``<stage>/<key>/<filename>`` of every unit that exist in the store.

    Ids: the SAE's, plus ``artifact_key`` (the key of the artifact the file is in), plus
    ``scorer`` for score artifacts and ``artifact_stage`` for usage files.
    """
    refs = []
    for u in units:
        arts: list[tuple[Artifact, dict[str, Any]]]
        if stage == "score":
            arts = [(a, {"scorer": s}) for s, a in sorted(u.scores.items())]
        elif stage in u.related:
            arts = [(u.related[stage], {})]
        else:
            arts = []
        for a, extra in arts:
            path = store.path(a.stage, a.key) / filename
            if store.exists(a.stage, a.key) and path.is_file():
                refs.append(FileRef(path=path, ids={**u.ids(), "artifact_key": a.key, **extra}))
    return refs
