"""What a stage is: the types every stage module declares itself with.

Each stage lives in one module of :mod:`randsae.stages` that defines ``STAGE = StageDef(...)``:
its name and version, its input roles, how the plan expands it from the config, its default
resources, its output files and their schemas, and its runner. The plan, the Snakemake rules,
the CLI, the results loader and the docs all read that declaration (docs/architecture.md).

This module is light on purpose (standard library only): the Snakefile imports every stage
declaration at parse time, so heavy imports (torch, transformers) belong inside runners.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from randsae.plan import Plan
    from randsae.store import Store

Config = dict[str, Any]


@dataclass(frozen=True)
class Artifact:
    """One artifact the config needs: where it lives and what determines it.

    ``labels`` say what the artifact is about (model, variant, layer, seed, ...) for naming,
    lookups and the results tables; they are not part of the key (the params and input keys
    already determine everything).
    """

    stage: str
    key: str
    name: str  # human-readable, unique within a plan: sae/pythia-70m/rerandomized/L3/x64-k32/s0
    version: int = field(compare=False)
    params: dict[str, Any] = field(hash=False, compare=False)
    inputs: dict[str, str] = field(hash=False, compare=False)  # role -> input key
    input_stages: dict[str, str] = field(hash=False, compare=False)  # role -> input stage
    labels: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def relpath(self) -> str:
        return f"{self.stage}/{self.key}"

    def spec(self) -> dict[str, Any]:
        """Everything a job needs to build this artifact (JSON-serialisable)."""
        return {
            "stage": self.stage,
            "version": self.version,
            "key": self.key,
            "name": self.name,
            "params": self.params,
            "labels": self.labels,
            "inputs": {role: f"{self.input_stages[role]}/{k}" for role, k in self.inputs.items()},
        }


@dataclass(frozen=True)
class Planned:
    """One artifact a stage's ``expand`` asks for: the plan turns it into an :class:`Artifact`.

    ``tag`` names it within its stage (the artifact's name is ``<stage>/<tag>``); ``params``
    are what its key covers besides its inputs; ``inputs`` maps each role to an artifact
    planned earlier."""

    tag: str
    params: dict[str, Any]
    inputs: Mapping[str, Artifact]
    labels: dict[str, Any]


class PlanSoFar:
    """The artifacts planned so far, for a stage's ``expand`` to look up its inputs in."""

    def __init__(self) -> None:
        self._by_stage: dict[str, list[Artifact]] = {}

    def add(self, a: Artifact) -> None:
        self._by_stage.setdefault(a.stage, []).append(a)

    def all(self, stage: str) -> list[Artifact]:
        return list(self._by_stage.get(stage, []))

    def find(self, stage: str, **labels: Any) -> Artifact:
        """The one artifact of ``stage`` whose labels include ``labels``."""
        hits = [a for a in self._by_stage.get(stage, []) if all(a.labels.get(k) == v for k, v in labels.items())]
        if len(hits) != 1:
            raise LookupError(f"plan: {len(hits)} {stage} artifacts match {labels} (expected exactly one)")
        return hits[0]


@dataclass(frozen=True)
class Resources:
    """Default cluster resources of a stage's jobs (profiles override them by rule name)."""

    mem_mb: int
    runtime: int  # minutes
    gpus: int = 0  # GPUs a job of this stage can use (requested by the SLURM profile)


@dataclass(frozen=True)
class OutputFile:
    """One file of a stage's artifact. ``schema`` names the typed row schema of a Parquet file
    (``module:attribute``, resolved lazily so declarations stay light)."""

    name: str
    doc: str
    schema: str | None = None


@dataclass
class StageContext:
    """What a runner gets: the artifact's spec, its work directory (published atomically by
    :func:`randsae.stages.build` once the runner returns), its finished inputs, the store and the
    execution settings (config section ``execution``; never part of a key)."""

    spec: dict[str, Any]
    workdir: Path
    inputs: dict[str, Path]  # role -> finished input artifact directory
    store: Store
    settings: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # facts for meta.json

    @property
    def params(self) -> dict[str, Any]:
        return self.spec["params"]

    @property
    def labels(self) -> dict[str, Any]:
        return self.spec.get("labels", {})

    @property
    def name(self) -> str:
        return self.spec["name"]


Expand = Callable[[Config, PlanSoFar], Iterable[Planned]]


def group_by_inputs(*roles: str) -> Callable[[Artifact], str]:
    """A ``group`` function: artifacts with the same input keys in ``roles`` share one job."""

    def group(a: Artifact) -> str:
        return "-".join(a.inputs[role] for role in roles)

    return group


def group_by_labels(*names: str) -> Callable[[Artifact], str]:
    """A ``group`` function: artifacts with the same plan labels ``names`` (e.g. model and
    variant) share one job."""

    def group(a: Artifact) -> str:
        return "-".join(str(a.labels[name]) for name in names)

    return group


@dataclass(frozen=True)
class StageDef:
    """The one declaration of a stage.

    ``version``: bump it when the meaning of the stage's output changes; its keys and every key
    downstream change with it, so old artifacts are never reused by mistake.
    ``inputs``: role -> stage of that input. ``expand``: the artifacts the config needs.
    ``run``: builds one artifact; or ``run_group`` with ``group``: artifacts with equal group ids
    are built by one job (for example every layer of one model variant in one forward pass).
    ``run`` with ``group``: one job builds its group's artifacts one after another (no shared
    compute, but one process start, import and input load for many small artifacts).
    ``local``: whether jobs must run on the submit host for this config (API calls from a
    cluster whose compute nodes have no internet).
    ``priority``: among jobs ready at once, Snakemake starts those of higher priority first; the
    stages on the longest chain (activations, then sae training) go first, so the many short
    jobs after them fill the cores while it runs instead of delaying it.
    ``devices``: for a grouped stage whose job may span several devices (sae: execution.sae.
    devices), how many the job for the group's artifacts still to build uses; the rule then
    launches one process per device and asks for that many GPUs, and the job's settings carry
    the count as ``devices``. None: one device.
    ``extra_inputs``: artifacts a job of this stage reads when the plan has them, beyond its
    keyed inputs (the sae jobs read cached activations when the config caches them): the rules
    list them as inputs, so Snakemake orders the jobs, and no key covers them, so an artifact's
    key is the same with or without them.
    """

    name: str
    version: int
    doc: str
    inputs: Mapping[str, str]
    expand: Expand
    resources: Resources
    outputs: tuple[OutputFile, ...]
    run: Callable[[StageContext], None] | None = None
    run_group: Callable[[list[StageContext]], None] | None = None
    group: Callable[[Artifact], str] | None = None
    local: Callable[[Config], bool] = lambda cfg: False
    extra_inputs: Callable[[Artifact, Plan], list[Artifact]] | None = None
    priority: int = 0
    devices: Callable[[Config, Plan, Sequence[Artifact]], int] | None = None

    def __post_init__(self) -> None:
        if (self.run is None) == (self.run_group is None):
            raise ValueError(f"stage {self.name}: give exactly one of run and run_group")
        if self.run_group is not None and self.group is None:
            raise ValueError(f"stage {self.name}: run_group needs group")
