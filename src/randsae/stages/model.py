"""Stage ``model``: one variant of one model, saved as safetensors + tokenizer + variant.json.

The trained model and a step0 checkpoint taken from a revision are loaded from their
source. Every other variant (rerandomized, rerandomized_no_embed, control, step0 from the
architecture's initialiser) is derived from the trained artifact already in the store, so
a slow source (a GGUF conversion, a hub download) is read once per model, not per variant.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from randsae.enums import TRAINED
from randsae.inputs import split_location
from randsae.stage import Config, OutputFile, Planned, PlanSoFar, Resources, StageContext, StageDef


def expand(cfg: Config, so_far: PlanSoFar) -> Iterator[Planned]:
    """Per model: the trained artifact, then one per other configured variant."""
    for mname, m in cfg["models"].items():
        # a pinned source is keyed by its fingerprint; its path rides in the labels (randsae.inputs)
        source, where = split_location(m["source"])
        located = {"location": where} if where else {}
        if source["kind"] == "hub":
            source.setdefault("revision", "main")
        yield Planned(f"{mname}/{TRAINED}", {"variant": TRAINED, "source": source}, {},
                      {"model": mname, "variant": TRAINED, **located})
        trained = so_far.find("model", model=mname, variant=TRAINED)
        for variant in cfg["variants"]:
            if variant == TRAINED:
                continue
            labels = {"model": mname, "variant": variant}
            if variant == "step0" and m["step0_revision"] is not None:
                step0 = {**source, "revision": m["step0_revision"]}
                if m.get("step0_fingerprint"):
                    step0["fingerprint"] = m["step0_fingerprint"]
                params = {"variant": "step0", "method": "revision", "source": step0}
                yield Planned(f"{mname}/step0", params, {}, {**labels, **located})
                continue
            params = {"variant": variant, "seed": cfg["seed"]}
            if variant == "step0":
                params["method"] = "init"
            if variant == "control":
                params["noise"] = "per_sequence"  # seeded per row, not per batch (docs/variants.md)
            yield Planned(f"{mname}/{variant}", params, {"trained": trained}, labels)


def run(ctx: StageContext) -> None:
    from randsae.models.artifact import (
        build_model,
        load_model_artifact,
        model_facts,
        save_model_artifact,
    )
    from randsae.models.variants import apply_variant, init_from_config

    p = ctx.params
    variant = p["variant"]
    if "source" in p:  # trained, or step0 by revision: straight from the source
        source = {**p["source"], **ctx.labels.get("location", {})}
        model, tokenizer, info = build_model(
            source, variant, seed=0, step0_revision=source.get("revision") if variant == "step0" else None
        )
        info.pop("seed", None)  # no random draw was made
    else:
        trained = load_model_artifact(ctx.inputs["trained"])
        tokenizer = trained.tokenizer
        extra: dict[str, Any]
        if variant == "step0":  # no init checkpoint: the architecture's own initialiser
            model = init_from_config(trained.model.config, p["seed"], trained.model.dtype)
            extra = {"step0_method": "init", "step0_revision": None}
        else:
            model = trained.model
            extra = {"step0_method": None, "step0_revision": None, **apply_variant(model, variant, p["seed"])}
            if variant == "control":
                extra["control_noise"] = p["noise"]
        info = {"variant": variant, "seed": p["seed"], "source": trained.info.get("source"), **extra,
                **model_facts(model, variant)}
    save_model_artifact(model, tokenizer, info, ctx.workdir)
    ctx.info.update({k: info[k] for k in ("variant", "step0_method", "n_params", "tied_embeddings", "embedding_handling") if k in info})


STAGE = StageDef(
    name="model",
    version=1,
    doc="one variant of one model: weights, tokenizer and what was done to them",
    inputs={"trained": "model"},  # derived variants read the trained artifact
    expand=expand,
    resources=Resources(mem_mb=8000, runtime=60),
    outputs=(
        OutputFile("model.safetensors", "weights (with config.json, as save_pretrained writes them)"),
        OutputFile("variant.json", "variant, seed, source and how embeddings were handled"),
    ),
    run=run,
)
