"""Stage ``sae``: TopK SAEs trained on the residual stream of one model variant.

An SAE's inputs are the model variant and the train tokens; its parameters are the config's
``sae`` section (one artifact per (expansion, k, seed) of the grid) and where it reads the
model: ``layer``, ``activations_dtype`` (the dtype rows are rounded to before training),
``model_dtype`` and ``drop_first_position``. One job per (model variant, train tokens) trains
every SAE of that stream: all layers, seeds and (expansion, k) (:func:`run_group`).

Where the rows come from is an execution choice, in no key (``execution.activations.cache``):
a layer whose activations artifact is in the store is read from it (the rules list the planned
ones as extra inputs, so they are built first); any other layer is streamed from the model's
forward pass (:mod:`randsae.sae.stream`), one pass for every streamed layer. Both give the same
rows in the same order (docs/sae.md, "Data order"), so the same SAE bytes on the CPU.

Output (see docs/sae.md): sae.safetensors, cfg.json, train_log.parquet, train_summary.json.
A job's checkpoints (every SAE of a pass in one file) live in the partial directory of the
pass's first SAE while training, so a killed job resumes from its last checkpoint
(bitwise-identical result on CPU); they are removed before publication.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

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
    group_by_inputs,
)
from randsae.stages.activations import activation_params

if TYPE_CHECKING:
    from randsae.plan import Plan
    from randsae.sae.config import SaeConfig
    from randsae.sae.trainer import TrainPart

log = logging.getLogger("randsae")

CHECKPOINTS = "checkpoints"
#: Where the SAE reads the model: the output of transformer block ``layer`` (docs/data.md).
HOOKPOINT = "block_output"
#: Parameters saying where the SAE reads the model (the rest are SaeConfig fields).
WHERE = ("layer", "activations_dtype", "model_dtype", "drop_first_position")
# config key (schema) -> SaeConfig field, where the names differ
_RENAMED = {"expansion": "expansion_factor"}


def sae_config(params: dict, checkpoint_every_steps: int = 1000) -> SaeConfig:
    from randsae.sae.config import SaeConfig

    fields = {_RENAMED.get(k, k): v for k, v in params.items() if k not in WHERE}
    return SaeConfig.from_dict({**fields, "checkpoint_every_steps": checkpoint_every_steps})


def activations_of(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters of the activations artifact holding the rows an SAE with ``params`` reads."""
    return activation_params(params["layer"], params["activations_dtype"], params["model_dtype"],
                             params["drop_first_position"])


def cached_activations(sae: Artifact, plan: Plan) -> Artifact | None:
    """The planned activations artifact this SAE's job reads, or None when its group streams."""
    want_inputs = {"model": sae.inputs["model"], "tokens": sae.inputs["tokens"]}
    want = activations_of(sae.params)
    hits = [a for a in plan.stage("activations") if a.inputs == want_inputs and a.params == want]
    return hits[0] if hits else None


def extra_inputs(sae: Artifact, plan: Plan) -> list[Artifact]:
    """For the rules: the cached activations the job will read, if the plan caches them."""
    acts = cached_activations(sae, plan)
    return [acts] if acts is not None else []


def record_trained_on(ctx: StageContext, source: str) -> None:
    """Write what the SAE reads into its cfg.json (``trained_on``) and meta.json info: model,
    variant, layer, hookpoint and the activations' position rule and dtype, so the artifact
    describes itself and nothing has to parse artifact names to recover them. ``source``
    (cached or streamed) goes to meta.json only: it is how, not what."""
    p = ctx.params
    record = {"model": ctx.labels.get("model"), "variant": ctx.labels.get("variant"),
              "layer": p["layer"], "hookpoint": HOOKPOINT,
              "drop_first_position": p["drop_first_position"], "activations_dtype": p["activations_dtype"]}
    path = ctx.workdir / "cfg.json"
    cfg = json.loads(path.read_text())
    cfg["trained_on"] = record
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    ctx.info.update({**record, "activations_source": source})


def _pass_key(ctx: StageContext, cfg: SaeConfig) -> tuple:
    """SAEs with equal pass keys share one pass over the data: the same data order (batches),
    log interval and model load. Within a plan's group that is every SAE; differing
    ``sae`` settings would need separate passes (docs/sae.md)."""
    from randsae.sae.trainer import DATA_ORDER_FIELDS, LOOP_FIELDS

    p = ctx.params
    return (p["model_dtype"], p["activations_dtype"], p["drop_first_position"],
            *(getattr(cfg, f) for f in DATA_ORDER_FIELDS + LOOP_FIELDS))


def run_group(ctxs: list[StageContext]) -> None:
    """Every SAE among ``ctxs`` (one model variant, one train split): one pass per pass key,
    each training every layer's SAEs together, each layer read from its cached activations
    when those are in the store, else streamed from one forward pass shared by those layers."""
    settings = ctxs[0].settings
    every = int(settings.get("checkpoint_every_steps", 1000))
    passes: dict[tuple, list[tuple[StageContext, SaeConfig]]] = defaultdict(list)
    for c in sorted(ctxs, key=lambda c: c.spec["key"]):
        cfg = sae_config(c.params, every)
        passes[_pass_key(c, cfg)].append((c, cfg))
    for members in passes.values():
        _train_pass(members, settings)


def _check_memory(members: list[tuple[StageContext, SaeConfig]], first: StageContext, streamed: list[int],
                  settings: dict[str, Any], device: Any) -> None:
    """Refuse before anything is loaded when the pass would not fit in the device's memory
    (CUDA only; the CPU pages). The message names the settings that shrink the largest parts."""
    from randsae import forward
    from randsae.estimates import check_fits, device_memory_bytes, memory_for_specs

    limit = device_memory_bytes(device)
    if limit is None:
        return
    ctx_len = int(forward.open_tokens(first.inputs["tokens"]).shape[1])
    est = memory_for_specs([c.spec for c, _ in members], first.inputs["model"], streamed_layers=streamed,
                           forward_batch_seqs=int(settings.get("forward_batch_size", 8)), ctx_len=ctx_len)
    check_fits(est, limit)


def _train_pass(members: list[tuple[StageContext, SaeConfig]], settings: dict[str, Any]) -> None:
    import contextlib

    from randsae.devices import resolve_device
    from randsae.sae.data import ActivationStream
    from randsae.sae.trainer import CheckpointMismatchError, TrainPart, train_parts

    device = resolve_device(settings.get("device", "auto"))
    first, cfg0 = members[0]
    by_layer: dict[int, list[tuple[StageContext, SaeConfig]]] = defaultdict(list)
    for c, cfg in members:
        by_layer[c.params["layer"]].append((c, cfg))
    order: dict[str, Any] = {"batch_size": cfg0.batch_size, "shuffle_buffer_tokens": cfg0.shuffle_buffer_tokens,
             "shuffle_block_sequences": cfg0.shuffle_block_sequences, "data_seed": cfg0.data_seed,
             "max_tokens": cfg0.max_tokens}
    cached = {layer: _cached_acts(ms[0][0]) for layer, ms in by_layer.items()}
    streamed = sorted(layer for layer, path in cached.items() if path is None)
    name = first.name.rsplit("/", 3)[0]
    log.info("%s: %d SAEs on layers %s (%s)", name, len(members), sorted(by_layer),
             ", ".join(f"L{la} {'streamed' if cached[la] is None else 'cached'}" for la in sorted(by_layer)))
    _check_memory(members, first, streamed, settings, device)
    ckdir = first.workdir / CHECKPOINTS
    with contextlib.ExitStack() as stack:
        windows = None
        if streamed:
            windows = _forward_windows(first, streamed, settings, device, name)
        parts: list[TrainPart] = []
        for layer in sorted(by_layer):
            path = cached[layer]
            stream = (stack.enter_context(ActivationStream(path, **order)) if path is not None
                      else windows.stream(layer, **order))  # type: ignore[union-attr]
            ms = by_layer[layer]
            parts.append(TrainPart(stream, [c.workdir for c, _ in ms], [cfg for _, cfg in ms]))
        try:
            results = train_parts(parts, ckdir, device=device)
        except CheckpointMismatchError as e:
            # another job built some of these SAEs, or the config's grid changed since the
            # checkpoint: it is no use to this pass, start it afresh
            log.warning("%s: discarding a checkpoint of another pass (%s)", name, e)
            shutil.rmtree(ckdir, ignore_errors=True)
            results = train_parts(parts, ckdir, device=device)
    shutil.rmtree(ckdir, ignore_errors=True)
    for layer, part_results in zip(sorted(by_layer), results):
        for (c, _), result in zip(by_layer[layer], part_results):
            record_trained_on(c, "streamed" if cached[layer] is None else "cached")
            c.info.update({k: v for k, v in result._asdict().items()
                           if k != "out_dir" and isinstance(v, int | float | str | bool)})
            if windows is not None:
                c.info["forward_seconds"] = round(windows.forward_seconds, 2)


def _cached_acts(ctx: StageContext):
    """The acts.zarr of this SAE's layer if its activations artifact is in the store (checked
    against its meta.json like any input), else None (the layer is streamed)."""
    from randsae.plan import artifact_key

    inputs = {role: ref.split("/")[1] for role, ref in ctx.spec["inputs"].items()}
    key = artifact_key("activations", activations_of(ctx.params), inputs)
    if not ctx.store.exists("activations", key):
        return None
    ctx.store.check("activations", key, reader=f"{ctx.name}: cached activations")
    return ctx.store.path("activations", key) / "acts.zarr"


def _forward_windows(ctx: StageContext, layers: list[int], settings: dict[str, Any], device, name: str):
    from randsae import zarr_io
    from randsae.models.artifact import load_model_artifact
    from randsae.sae.stream import ForwardWindows

    p = ctx.params
    loaded = load_model_artifact(ctx.inputs["model"], dtype=zarr_io.torch_dtype(p["model_dtype"]), device=device)
    return ForwardWindows(loaded, ctx.inputs["tokens"], layers, dtype=p["activations_dtype"],
                          drop_first_position=p["drop_first_position"],
                          forward_batch_size=int(settings.get("forward_batch_size", 8)), device=device,
                          label=f"{name} forward")


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
    """Per model variant and hooked layer: one SAE per (expansion, k, seed) of the grid, over
    the variant and the train tokens. Every other key of the config's ``sae`` section is a
    parameter, and so is where the SAE reads the model (:data:`WHERE`)."""
    fixed = {key: v for key, v in cfg["sae"].items() if key not in ("expansion", "k", "seeds")}
    act = cfg["activations"]
    for mname, m in cfg["models"].items():
        tokens = so_far.find("tokens", model=mname, split="train")
        for variant in cfg["variants"]:
            model = so_far.find("model", model=mname, variant=variant)
            for layer in m["layers"]:
                where = {"layer": layer, "activations_dtype": act["dtype"], "model_dtype": m["dtype"],
                         "drop_first_position": act["drop_first_position"]}
                for expansion, k, seed in sae_grid(cfg):
                    labels = {"model": mname, "variant": variant, "layer": layer,
                              "expansion": expansion, "k": k, "seed": seed}
                    tag = "{model}/{variant}/L{layer}/x{expansion}-k{k}/s{seed}".format(**labels)
                    yield Planned(tag, {**fixed, **where, "expansion": expansion, "k": k, "seed": seed},
                                  {"model": model, "tokens": tokens}, labels)


#: One job per (model variant, train tokens): every SAE that reads that forward pass.
group = group_by_inputs("model", "tokens")


STAGE = StageDef(
    name="sae",
    # 2: the data order's block is shuffle_block_sequences whole sequences (keyed), no longer
    # the Zarr chunk length (an execution setting)
    # 3: inputs are the model variant and the train tokens (cached or streamed activations are
    # an execution choice); the parameters gain layer, activations_dtype, model_dtype and
    # drop_first_position, which the activations input's key used to cover
    version=3,
    doc="one TopK SAE trained on one layer of a model variant's residual stream (cached or streamed)",
    inputs={"model": "model", "tokens": "tokens"},
    expand=expand,
    resources=Resources(mem_mb=16000, runtime=720, gpus=1),
    outputs=(
        OutputFile("sae.safetensors", "encoder, decoder and biases"),
        OutputFile("cfg.json", "the SAE's configuration and what it was trained on"),
        OutputFile("train_log.parquet", "per-step training log", "randsae.sae.train_log:SCHEMA"),
        OutputFile("train_summary.json", "final training statistics"),
    ),
    run_group=run_group,
    group=group,
    extra_inputs=extra_inputs,
)
