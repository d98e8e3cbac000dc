"""Stage ``model``: one variant of one model, saved as safetensors + tokenizer + variant.json.

The trained model and a step0 checkpoint taken from a revision are loaded from their
source. Every other variant (rerandomized, rerandomized_no_embed, control, step0 from the
architecture's initialiser) is derived from the trained artifact already in the store, so
a slow source (a GGUF conversion, a hub download) is read once per model, not per variant.
"""

from __future__ import annotations

from typing import Any

from randsae.stages import StageContext


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
        model, tokenizer, info = build_model(
            p["source"], variant, seed=0, step0_revision=p["source"].get("revision") if variant == "step0" else None
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
