"""Which artifacts belong to which SAE: the plan, read as one row per SAE.

Every per-SAE artifact (sae_metrics, latents, examples, explain, score) carries the SAE's labels
in the plan (model, variant, layer, expansion, k, seed; score adds its scorer), so the SAE's
identifying columns are attached to each file from the plan, never parsed out of names or of the
files themselves: a file only holds what its stage measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from randsae.plan import Artifact, Plan
from randsae.stages import declared_output
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


#: The stages with one artifact per SAE (score: one per SAE and scorer).
PER_SAE_STAGES: tuple[str, ...] = ("sae_metrics", "latents", "examples", "explain")


def sae_units(plan: Plan) -> list[SaeUnit]:
    """Every SAE of the plan, in plan order, with its related artifacts, matched by the plan's
    labels (model, variant, layer, expansion, k, seed), never by parsing names."""
    def ident(a: Artifact) -> tuple[Any, ...]:
        return tuple(a.labels.get(c) for c in ID_COLUMNS[1:])

    related_by: dict[tuple[Any, ...], dict[str, Artifact]] = {}
    scores_by: dict[tuple[Any, ...], dict[str, Artifact]] = {}
    for art in plan:
        if art.stage in PER_SAE_STAGES:
            related_by.setdefault(ident(art), {})[art.stage] = art
        elif art.stage == "score":
            scores_by.setdefault(ident(art), {})[art.labels["scorer"]] = art
    units = []
    for sae in plan.stage("sae"):
        lab = sae.labels
        units.append(
            SaeUnit(
                sae=sae,
                tag=sae.name.removeprefix("sae/"),
                model=lab["model"],
                variant=lab["variant"],
                layer=int(lab["layer"]),
                expansion=int(lab["expansion"]),
                k=int(lab["k"]),
                seed=int(lab["seed"]),
                related=related_by.get(ident(sae), {}),
                scores=scores_by.get(ident(sae), {}),
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
    filename = declared_output(stage, filename).name
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
