"""Stage runners: one module per stage, each exposing ``run(ctx: StageContext) -> None``.

A runner writes its artifact's files into ``ctx.workdir`` and may record facts in
``ctx.info`` (they go into meta.json). It never publishes: :func:`build` does that through
the store, atomically. Runners are imported lazily so the CLI and the Snakefile stay fast.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from randsae.store import Store

log = logging.getLogger("randsae")

RUNNERS: dict[str, str] = {
    "model": "randsae.stages.model",
    "tokens": "randsae.stages.tokens",
    "sae": "randsae.stages.sae",
    "sae_metrics": "randsae.stages.sae_metrics",
    "latents": "randsae.stages.latents",
    "examples": "randsae.stages.examples",
    "explain": "randsae.stages.explain",
    "score": "randsae.stages.score",
}


@dataclass
class StageContext:
    spec: dict[str, Any]
    workdir: Path
    inputs: dict[str, Path]  # role -> finished input artifact directory
    store: Store
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, Any]:
        return self.spec["params"]


def build(spec: dict[str, Any], store: Store) -> Path:
    """Build one artifact from its plan spec unless it already exists; return its path."""
    stage = spec["stage"]
    if stage not in RUNNERS:
        raise ValueError(f"stage {stage!r} has no runner (known: {', '.join(sorted(RUNNERS))})")
    inputs: dict[str, Path] = {}
    for role, ref in spec["inputs"].items():
        in_stage, in_key = ref.split("/")
        if not store.exists(in_stage, in_key):
            raise FileNotFoundError(f"{spec['name']}: input {role} ({ref}) is not in the store at {store.root}")
        inputs[role] = store.path(in_stage, in_key)
    runner = importlib.import_module(RUNNERS[stage])
    with store.publish(spec) as b:
        if b.done:
            log.info("%s already built by another process (%s)", spec["name"], b.workdir)
            return b.workdir
        log.info("building %s -> %s", spec["name"], store.path(stage, spec["key"]))
        ctx = StageContext(spec=spec, workdir=b.workdir, inputs=inputs, store=store, info=b.extra_meta)
        runner.run(ctx)
    return store.path(stage, spec["key"])
