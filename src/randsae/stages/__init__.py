"""The stages: one module each in this package, each declaring ``STAGE = StageDef(...)``
(:mod:`randsae.stage`). Adding a module here adds a stage; nothing else lists them.

:func:`stage_defs` discovers the declarations and orders them so that every stage comes after
the stages it reads. :func:`build` and :func:`build_group` run a stage's runner into the store's
partial directory and publish the artifact atomically (a runner never publishes).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import pkgutil
from typing import TYPE_CHECKING, Any

from randsae.errors import RandsaeError
from randsae.stage import OutputFile, StageContext, StageDef

if TYPE_CHECKING:  # the store is passed in; importing it here would be a cycle (store -> stages)
    from randsae.store import Store

log = logging.getLogger("randsae")


class MissingInput(RandsaeError, FileNotFoundError):
    """An artifact's input is not in the store."""


@functools.cache
def stage_defs() -> dict[str, StageDef]:
    """Every stage's declaration, by name, inputs before consumers."""
    found: dict[str, StageDef] = {}
    for mod in pkgutil.iter_modules(__path__):
        stage = getattr(importlib.import_module(f"{__name__}.{mod.name}"), "STAGE", None)
        if isinstance(stage, StageDef):
            if stage.name in found:
                raise RuntimeError(f"two modules declare stage {stage.name!r}")
            found[stage.name] = stage
    depth: dict[str, int] = {}

    def visit(name: str, path: tuple[str, ...]) -> int:
        if name in depth:
            return depth[name]
        if name in path:
            raise RuntimeError(f"stage inputs form a cycle: {' -> '.join((*path, name))}")
        if name not in found:
            raise RuntimeError(f"stage {path[-1]!r} reads unknown stage {name!r}")
        # a stage may read its own earlier artifacts (model variants read the trained model)
        ups = [visit(up, (*path, name)) for up in found[name].inputs.values() if up != name]
        depth[name] = 1 + max(ups, default=-1)
        return depth[name]

    for name in found:
        visit(name, ())
    # pipeline order: by depth in the input graph (so inputs come first), then by name
    ordered = {name: found[name] for name in sorted(found, key=lambda n: (depth[n], n))}
    return ordered


def stage_def(name: str) -> StageDef:
    defs = stage_defs()
    if name not in defs:
        raise ValueError(f"unknown stage {name!r} (known: {', '.join(defs)})")
    return defs[name]


def declared_output(stage: str, filename: str) -> OutputFile:
    """The declaration of one output file of ``stage``: what readers (the results loader) ask
    for, so a renamed or undeclared file is an error here rather than silently missing rows."""
    for out in stage_def(stage).outputs:
        if out.name == filename:
            return out
    raise ValueError(f"stage {stage} declares no output {filename!r} "
                     f"(it declares {', '.join(o.name for o in stage_def(stage).outputs)})")


def _inputs(spec: dict[str, Any], store: Store) -> dict[str, Any]:
    """The finished input directories, each checked against its meta.json first (Store.check:
    sizes and checksums; a damaged input is an error naming it and the command that removes
    it and its dependents, never something a runner reads)."""
    inputs = {}
    for role, ref in spec["inputs"].items():
        in_stage, in_key = ref.split("/")
        if not store.path(in_stage, in_key).is_dir():
            raise MissingInput(f"{spec['name']}: input {role} ({ref}) is not in the store at {store.root}; "
                               "run the pipeline (snakemake) to build it first")
        store.check(in_stage, in_key, reader=f"{spec['name']}: input {role}")
        inputs[role] = store.path(in_stage, in_key)
    return inputs


def _check_version(spec: dict[str, Any], stage: StageDef) -> None:
    if spec.get("version") != stage.version:
        raise RandsaeError(f"{spec['name']}: spec is for {stage.name} version {spec.get('version')}, "
                         f"this code builds version {stage.version}; re-plan with this code")


def build(spec: dict[str, Any], store: Store, settings: dict[str, Any] | None = None):
    """Build one artifact from its plan spec unless it already exists; return its path."""
    stage = stage_def(spec["stage"])
    if stage.run is None:
        build_group([spec], store, settings)
        return store.path(stage.name, spec["key"])
    _check_version(spec, stage)
    inputs = _inputs(spec, store)
    with store.publish(spec) as b:
        if b.done:
            log.info("%s already built by another process (%s)", spec["name"], b.workdir)
            return b.workdir
        log.info("building %s -> %s", spec["name"], store.path(stage.name, spec["key"]))
        stage.run(StageContext(spec=spec, workdir=b.workdir, inputs=inputs, store=store,
                               settings=dict(settings or {}), info=b.extra_meta))
    return store.path(stage.name, spec["key"])


def build_group(specs: list[dict[str, Any]], store: Store, settings: dict[str, Any] | None = None) -> None:
    """Build every not-yet-built artifact among ``specs`` (one stage, one group) in one job."""
    stage = stage_def(specs[0]["stage"])
    if any(s["stage"] != stage.name for s in specs):
        raise ValueError("build_group: specs of several stages")
    if stage.run_group is None:
        for spec in specs:
            build(spec, store, settings)
        return
    for spec in specs:
        _check_version(spec, stage)
    from randsae.sae.distributed import join, leave

    world = join(dict(settings or {}))  # None unless one of several processes (execution.sae.devices)
    if world is not None and world.rank > 0:
        _follow(stage, specs, store, settings)
        return
    with contextlib.ExitStack() as stack:
        todo: list[StageContext] = []
        for spec in specs:
            inputs = _inputs(spec, store)
            b = stack.enter_context(store.publish(spec))
            if b.done:
                log.info("%s already built by another process (%s)", spec["name"], b.workdir)
                continue
            todo.append(StageContext(spec=spec, workdir=b.workdir, inputs=inputs, store=store,
                                     settings=dict(settings or {}), info=b.extra_meta))
        if todo:
            log.info("building %d %s artifacts in one job: %s", len(todo), stage.name,
                     ", ".join(c.name for c in todo))
        if todo or world is not None:  # the other ranks wait for rank 0's word even when none is left
            stage.run_group(todo)
        # leaving the stack publishes each artifact (in reverse order, each atomically)
    if world is not None:
        leave()  # the other ranks link the outputs once they are published


def _follow(stage: StageDef, specs: list[dict[str, Any]], store: Store, settings: dict[str, Any] | None) -> None:
    """A rank other than 0 of a job on several devices (randsae.sae.distributed): rank 0 locks,
    checks the inputs and publishes; this rank writes its share into the partial directories."""
    from randsae.sae.distributed import leave

    assert stage.run_group is not None
    stage.run_group([
        StageContext(spec=spec, workdir=store.partial_path(stage.name, spec["key"]),
                     inputs={role: store.path(*ref.split("/")) for role, ref in spec["inputs"].items()},
                     store=store, settings=dict(settings or {}))
        for spec in specs])
    leave()
