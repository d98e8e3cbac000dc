"""Stage ``sae``: one TopK SAE trained on one layer's activations.

Output (see docs/sae.md): sae.safetensors, cfg.json, train_log.parquet, train_summary.json.
Checkpoints live in the artifact's partial directory while training, so a killed job
resumes from its last checkpoint (bitwise-identical result on CPU); they are removed
before publication.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

from randsae.config import as_list
from randsae.stage import (
    Artifact,
    Config,
    OutputFile,
    Planned,
    PlanSoFar,
    Resources,
    StageContext,
    StageDef,
)

CHECKPOINTS = "checkpoints"
#: Where the SAE reads the model: the output of transformer block ``layer`` (docs/data.md).
HOOKPOINT = "block_output"
# config key (schema) -> SaeConfig field, where the names differ
_RENAMED = {"expansion": "expansion_factor"}


def sae_config(params: dict, checkpoint_every_steps: int = 1000):
    from randsae.sae.config import SaeConfig

    fields = {_RENAMED.get(k, k): v for k, v in params.items()}
    return SaeConfig.from_dict({**fields, "checkpoint_every_steps": checkpoint_every_steps})


def record_trained_on(ctx: StageContext) -> None:
    """Write what the SAE reads into its cfg.json (``trained_on``) and meta.json info: model,
    variant, layer, hookpoint and the activations' position rule and dtype, so the artifact
    describes itself even when its activations input has been deleted, and nothing has to
    parse artifact names to recover them."""
    acts = json.loads((ctx.inputs["activations"] / "meta.json").read_text())["params"]
    record = {"model": ctx.labels.get("model"), "variant": ctx.labels.get("variant"),
              "layer": acts["layer"], "hookpoint": HOOKPOINT,
              "drop_first_position": acts["drop_first_position"], "activations_dtype": acts["dtype"]}
    path = ctx.workdir / "cfg.json"
    cfg = json.loads(path.read_text())
    cfg["trained_on"] = record
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    ctx.info.update(record)


def run(ctx: StageContext) -> None:
    from randsae.devices import resolve_device
    from randsae.sae.trainer import train_sae

    cfg = sae_config(ctx.params, int(ctx.settings.get("checkpoint_every_steps", 1000)))
    ckpt = ctx.workdir / CHECKPOINTS
    result = train_sae(ctx.inputs["activations"] / "acts.zarr", ctx.workdir, cfg, ckpt,
                       device=resolve_device(ctx.settings.get("device", "auto")))
    shutil.rmtree(ckpt, ignore_errors=True)
    record_trained_on(ctx)
    ctx.info.update({k: v for k, v in result._asdict().items() if k != "out_dir" and isinstance(v, int | float | str | bool)})


def sae_grid(cfg: Config) -> list[tuple[int, int, int]]:
    """(expansion, k, seed) of every SAE trained per (model variant, layer)."""
    s = cfg["sae"]
    return [(x, k, seed) for x in as_list(s["expansion"]) for k in as_list(s["k"]) for seed in s["seeds"]]


def per_sae(cfg: Config, so_far: PlanSoFar, split: str) -> Iterator[tuple[Artifact, dict[str, Any], dict[str, Artifact]]]:
    """For the stages that run an SAE inside its model over a split (sae_metrics, latents):
    each SAE, the parameters saying where it reads the model (layer, model dtype, position-0
    rule), and the inputs model variant, sae and tokens of ``split``."""
    for sae in so_far.all("sae"):
        lab = sae.labels
        where = {"layer": lab["layer"], "model_dtype": cfg["models"][lab["model"]]["dtype"],
                 "drop_first_position": cfg["activations"]["drop_first_position"]}
        inputs = {"model": so_far.find("model", model=lab["model"], variant=lab["variant"]), "sae": sae,
                  "tokens": so_far.find("tokens", model=lab["model"], split=split)}
        yield sae, where, inputs


def expand(cfg: Config, so_far: PlanSoFar) -> Iterator[Planned]:
    """Per activations artifact: one SAE per (expansion, k, seed) of the grid. Every other key
    of the config's ``sae`` section is a parameter."""
    fixed = {key: v for key, v in cfg["sae"].items() if key not in ("expansion", "k", "seeds")}
    for acts in so_far.all("activations"):
        for expansion, k, seed in sae_grid(cfg):
            labels = {**acts.labels, "expansion": expansion, "k": k, "seed": seed}
            tag = "{model}/{variant}/L{layer}/x{expansion}-k{k}/s{seed}".format(**labels)
            yield Planned(tag, {**fixed, "expansion": expansion, "k": k, "seed": seed}, {"activations": acts}, labels)


STAGE = StageDef(
    name="sae",
    # 2: the data order's block is shuffle_block_sequences whole sequences (keyed), no longer
    # the Zarr chunk length (an execution setting)
    version=2,
    doc="one TopK SAE trained on one layer's activations",
    inputs={"activations": "activations"},
    expand=expand,
    resources=Resources(mem_mb=16000, runtime=720, gpus=1),
    outputs=(
        OutputFile("sae.safetensors", "encoder, decoder and biases"),
        OutputFile("cfg.json", "the SAE's configuration and what it was trained on"),
        OutputFile("train_log.parquet", "per-step training log", "randsae.sae.train_log:SCHEMA"),
        OutputFile("train_summary.json", "final training statistics"),
    ),
    run=run,
)
