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
from collections.abc import Iterator, Sequence
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
    from randsae.sae.distributed import World
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
    from randsae.sae import distributed

    world = distributed.current()
    if world is not None:
        # several devices (docs/sae.md, "Several devices"): rank 0 says which SAEs are still to
        # build (another process may have built some), and every rank trains its share of those
        todo = set(distributed.broadcast([c.spec["key"] for c in ctxs] if world.rank == 0 else None))
        ctxs = [c for c in ctxs if c.spec["key"] in todo]
    if not ctxs:
        return
    settings = ctxs[0].settings
    every = int(settings.get("checkpoint_every_steps", 1000))
    passes: dict[tuple, list[tuple[StageContext, SaeConfig]]] = defaultdict(list)
    for c in sorted(ctxs, key=lambda c: c.spec["key"]):
        cfg = sae_config(c.params, every)
        passes[_pass_key(c, cfg)].append((c, cfg))
    for members in passes.values():
        if world is None:
            _train_pass(members, settings)
        else:
            _train_pass_distributed(members, settings, world)


Members = list[tuple["StageContext", "SaeConfig"]]


def _by_layer(members: Members) -> dict[int, Members]:
    out: dict[int, Members] = defaultdict(list)
    for c, cfg in members:
        out[c.params["layer"]].append((c, cfg))
    return out


def _data_order(cfg0: SaeConfig) -> dict[str, Any]:
    """The stream arguments that define a pass's data order (the same for every layer)."""
    return {"batch_size": cfg0.batch_size, "shuffle_buffer_tokens": cfg0.shuffle_buffer_tokens,
            "shuffle_block_sequences": cfg0.shuffle_block_sequences, "data_seed": cfg0.data_seed,
            "max_tokens": cfg0.max_tokens}


def _sources(by_layer: dict[int, Members], name: str, n: int) -> tuple[dict[int, Any], list[int]]:
    """Each layer's cached acts.zarr (None: streamed) and the streamed layers; logs the choice."""
    cached = {layer: _cached_acts(ms[0][0]) for layer, ms in by_layer.items()}
    streamed = sorted(layer for layer, path in cached.items() if path is None)
    log.info("%s: %d SAEs on layers %s (%s)", name, n, sorted(by_layer),
             ", ".join(f"L{la} {'streamed' if cached[la] is None else 'cached'}" for la in sorted(by_layer)))
    return cached, streamed


def _memory(members: Members, streamed: list[int], settings: dict[str, Any]):
    """The pass's predicted memory as a whole, and each SAE's own share (state and workspace)."""
    from randsae import forward
    from randsae.estimates import memory_for_specs

    first = members[0][0]
    ctx_len = int(forward.open_tokens(first.inputs["tokens"]).shape[1])
    whole = memory_for_specs([c.spec for c, _ in members], first.inputs["model"], streamed_layers=streamed,
                             forward_batch_seqs=int(settings.get("forward_batch_size", 8)), ctx_len=ctx_len)
    costs = [memory_for_specs([c.spec], first.inputs["model"]).total for c, _ in members]
    return whole, costs


def _record(c: StageContext, result: Any, streamed: bool) -> None:
    """What one trained SAE records: where it read the model, and its final statistics."""
    record_trained_on(c, "streamed" if streamed else "cached")
    c.info.update({k: v for k, v in result._asdict().items()
                   if k != "out_dir" and isinstance(v, int | float | str | bool)})


def _check_memory(members: Members, streamed: list[int], settings: dict[str, Any], device: Any) -> None:
    """Refuse before anything is loaded when the pass would not fit in the device's memory
    (CUDA only; the CPU pages). The message names the settings that shrink the largest parts."""
    from randsae.estimates import check_fits, device_memory_bytes, settings_to_change
    from randsae.sae_devices import fewest_devices

    limit = device_memory_bytes(device)
    if limit is None:
        return
    est, costs = _memory(members, streamed, settings)
    if est.total <= limit:
        return
    advice = settings_to_change(est)
    n = fewest_devices(costs, est.total - est.sae_state - est.sae_workspace, limit)
    if n is not None and n > 1:
        advice = f"execution.sae.devices: {n} (the group's SAEs spread over {n} devices, docs/sae.md); or {advice}"
    check_fits(est, limit, advice)


def _train_pass(members: list[tuple[StageContext, SaeConfig]], settings: dict[str, Any]) -> None:
    import contextlib

    from randsae.devices import resolve_device
    from randsae.sae.data import ActivationStream
    from randsae.sae.distributed import discard_others
    from randsae.sae.trainer import CheckpointMismatchError, TrainPart, train_parts

    device = resolve_device(settings.get("device", "auto"))
    first, cfg0 = members[0]
    by_layer, order = _by_layer(members), _data_order(cfg0)
    name = first.name.rsplit("/", 3)[0]
    cached, streamed = _sources(by_layer, name, len(members))
    _check_memory(members, streamed, settings, device)
    ckdir = first.workdir / CHECKPOINTS
    discard_others(ckdir, None, name)  # a distributed run's checkpoints cannot resume this one
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
            _record(c, result, cached[layer] is None)
            if windows is not None:
                c.info["forward_seconds"] = round(windows.forward_seconds, 2)


def _split_pass(members: list[tuple[StageContext, SaeConfig]], streamed: list[int], settings: dict[str, Any],
                world: World, name: str) -> dict[str, int]:
    """Rank 0: which rank trains each SAE (by key), checked against every device's memory before
    anything loads. Rank 0 also holds the model and the windows of the streamed layers."""
    import torch

    from randsae import forward
    from randsae.estimates import (
        check_fits,
        device_memory_bytes,
        memory_for_specs,
        settings_to_change,
    )
    from randsae.sae_devices import assign, fewest_devices

    first = members[0][0]
    model = first.inputs["model"]
    ctx_len = int(forward.open_tokens(first.inputs["tokens"]).shape[1])
    fwd = int(settings.get("forward_batch_size", 8))
    specs = [c.spec for c, _ in members]
    whole, costs = _memory(members, streamed, settings)
    base0 = whole.total - whole.sae_state - whole.sae_workspace
    ranks = assign(costs, world.size, [base0] + [0] * (world.size - 1))
    if world.device.type == "cuda":
        for r in range(world.size):
            limit = device_memory_bytes(torch.device("cuda", r))
            share = [s for s, o in zip(specs, ranks) if o == r]
            if share:
                est = memory_for_specs(share, model, streamed_layers=streamed if r == 0 else (),
                                       forward_batch_seqs=fwd, ctx_len=ctx_len)
            else:  # rank 0 serving only: the model, forward batch and windows
                est = whole._replace(n_saes=0, sae_state=0, sae_workspace=0)
            est = est._replace(group=f"{est.group} on device {r} of {world.size}")
            if limit is None or est.total <= limit:
                continue
            advice = settings_to_change(est)
            n = fewest_devices(costs, base0, limit)
            if n is not None and n > world.size:
                advice = f"execution.sae.devices: {n} (the group spread over {n} devices); or {advice}"
            elif n is None:
                advice = f"{advice} (more devices cannot help: one SAE{' and the model' if streamed else ''} alone do not fit)"
            check_fits(est, limit, advice)
    owners = {s["key"]: r for s, r in zip(specs, ranks)}
    log.info("%s: %d SAEs on %d devices: %s", name, len(specs), world.size,
             ", ".join(f"rank {r}: {ranks.count(r)}" for r in range(world.size)))
    return owners


def _train_pass_distributed(members: list[tuple[StageContext, SaeConfig]], settings: dict[str, Any],
                            world: World) -> None:
    """One pass on several devices (:mod:`randsae.sae.distributed`): rank 0 reads or streams
    every layer and serves the batches; each rank trains the SAEs it owns, writes them into their
    partial directories, and sends its statistics to rank 0, which publishes."""
    import contextlib

    from randsae import zarr_io
    from randsae.errors import RandsaeError
    from randsae.sae import distributed as dd
    from randsae.sae.data import ActivationStream, WindowedStream
    from randsae.sae.trainer import TrainPart, _signature, train_parts

    first, cfg0 = members[0]
    rank, device = world.rank, world.device
    by_layer, order = _by_layer(members), _data_order(cfg0)
    layers = sorted(by_layer)
    name = first.name.rsplit("/", 3)[0]
    setup: dict[str, Any] | None = None
    failure: Exception | None = None
    cached: dict[int, Any] = {}
    if rank == 0:
        cached, streamed = _sources(by_layer, name, len(members))
        try:
            setup = {"owners": _split_pass(members, streamed, settings, world, name),
                     "streamed": [la in streamed for la in layers]}
        except RandsaeError as e:  # too big even spread, or too few SAEs: every rank stops with it
            failure, setup = e, {"error": str(e)}
    setup = dd.broadcast(setup)
    assert setup is not None
    if failure is not None:
        raise failure
    if "error" in setup:
        raise dd.DistributedError(f"rank 0: {setup['error']}")
    owners: dict[str, int] = setup["owners"]
    ckdir = first.workdir / CHECKPOINTS
    rdir = dd.run_dir(ckdir, world.size, owners)
    mine = rdir / f"rank-{rank}"
    if rank == 0:
        dd.discard_others(ckdir, rdir, name)
    with contextlib.ExitStack() as stack:
        windows = server = None
        facts: list[dict[str, Any]] | None = None
        if rank == 0:
            streamed = [la for la, s in zip(layers, setup["streamed"]) if s]
            if streamed:
                windows = _forward_windows(first, streamed, settings, device, name)
            streams: list[WindowedStream] = [
                stack.enter_context(ActivationStream(cached[la], **order)) if cached[la] is not None
                else windows.stream(la, **order)  # type: ignore[union-attr]
                for la in layers]
            facts = [dd.stream_facts(s) for s in streams]
            server = dd.Server(streams, [[owners[c.spec["key"]] for c, _ in by_layer[la]] for la in layers],
                               device, cfg0.checkpoint_every_steps, rdir / "server")
        facts = dd.broadcast(facts)
        assert facts is not None
        rounds = dd.Rounds()
        source = server.source if server is not None else dd.Receiver(
            world, {i: f["d_model"] for i, f in enumerate(facts)},
            {i: zarr_io.torch_dtype(f["logical_dtype"]) for i, f in enumerate(facts)}).source
        parts: list[TrainPart] = []
        ids: list[int] = []
        owned: list[list[tuple[StageContext, SaeConfig]]] = []
        for i, la in enumerate(layers):
            ms = [(c, cfg) for c, cfg in by_layer[la] if owners[c.spec["key"]] == rank]
            if ms:
                stream = dd.RemoteStream(facts[i], order, source(i), rounds)
                parts.append(TrainPart(stream, [c.workdir for c, _ in ms], [cfg for _, cfg in ms]))
                ids.append(i)
                owned.append(ms)
        state = dd.agree_on_checkpoint(world, mine, _signature(parts), ids,
                                       rdir / "server" if rank == 0 else None, name)
        if server is not None and state is not None:
            server.load(state)
        # rank 0 may own no SAE (its model and windows leave no room): it only serves
        results = (train_parts(parts, mine, device=device, progress=rank == 0, round_sync=rounds.sync)
                   if parts else [])
        if server is not None:
            server.drain()
    infos: dict[str, dict[str, Any]] = {}
    for i, ms, part_results in zip(ids, owned, results):
        for (c, _), result in zip(ms, part_results):
            _record(c, result, setup["streamed"][i])
            infos[c.spec["key"]] = dict(c.info)
    # every rank has written its SAEs once every rank has sent its statistics
    gathered = dd.all_gather(infos)
    if rank == 0:
        merged = {k: v for g in gathered for k, v in g.items()}
        for c, _ in members:
            c.info.update(merged[c.spec["key"]])
            c.info["devices"] = world.size
            if windows is not None:
                c.info["forward_seconds"] = round(windows.forward_seconds, 2)
        shutil.rmtree(ckdir, ignore_errors=True)


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


def planned_devices(cfg: Config, plan: Plan, arts: Sequence[Artifact]) -> int:
    """How many devices the rule for the sae group ``arts`` launches: ``execution.sae.devices``,
    at most one per SAE; ``auto`` = the fewest 80 GiB devices (up to one per SAE plus a rank 0
    that only serves) the plan's memory prediction needs
    (:func:`randsae.estimates.device_split`; 1 when the model's width is unknown or no count
    fits: the job's own check then names the settings to change)."""
    from randsae.estimates import sae_group_memory

    setting = cfg["execution"].get("sae", {}).get("devices", 1)
    if setting != "auto":
        return max(1, min(int(setting), len(arts)))
    est = sae_group_memory(cfg, plan, arts)
    return 1 if est is None else est.devices


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
    devices=planned_devices,
    priority=1,  # on the longest chain: start before the short jobs (StageDef.priority)
)
