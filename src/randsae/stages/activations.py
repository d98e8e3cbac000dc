"""Stage ``activations``: residual-stream activations of the train split, one artifact per
layer, all layers of a model variant computed in one forward pass.

Each layer's artifact holds ``acts.zarr``: [n_rows, d_model] in the configured dtype (bf16
stored as raw uint16, see :mod:`randsae.zarr_io`), chunked along rows and compressed with
Blosc/LZ4 + bit-shuffle. With ``drop_first_position`` (default) position 0 of every packed
sequence is not stored: sequences are cut from running text, so position 0 is an arbitrary
token with no context, and its residual norm is an attention-sink outlier that would
dominate SAE training. Row r is then sequence r // (ctx_len - 1), position 1 + r % (ctx_len - 1).

Chunks hold whole sequences and are written in order; after each chunk every layer's
``progress.json`` records how many chunks are complete, so a killed job restarts from its
last complete chunk (the partial directories live in the store's ``.partial/``). Writes
run on a background thread, overlapped with the next chunk's forward passes.

Control variant: the input-embedding noise is seeded per sequence from (artifact seed,
sequence index), so a rerun reproduces it whatever the batch size.

Caching is an execution choice (``execution.activations.cache``): the plan has these artifacts
only for the (model variant, train tokens) groups that cache, and an sae job of a group that
does not streams the same rows from the forward pass instead (:mod:`randsae.sae.stream`). No
key depends on the choice. ``auto`` caches when the group's train activations fit under
``cache_budget_gb`` (default 200 GB: what a node's local or scratch disk holds comfortably; the
paper's 100M tokens of Pythia-70m at six bf16 layers are 614 GB, so its large models stream,
while every tiny and test config caches and reuses its activations across SAE edits).

The compute is :func:`randsae.activation_cache.write_activations` (over the shared forward
loop, :mod:`randsae.forward`); this module only plans and reads the execution settings, so
importing it stays cheap.
"""

from __future__ import annotations

from collections.abc import Iterator

from randsae.stage import (
    Config,
    OutputFile,
    Planned,
    PlanSoFar,
    Resources,
    StageContext,
    StageDef,
    group_by_inputs,
)


def run_group(ctxs: list[StageContext]) -> None:
    """Every layer's artifact among ``ctxs`` (same model and tokens) in one pass over the tokens."""
    from randsae import activation_cache
    from randsae.devices import resolve_device

    settings = ctxs[0].settings
    first = ctxs[0].spec
    params = first["params"]
    targets = [activation_cache.LayerTarget(c.spec["params"]["layer"], c.workdir, c.spec["params"]["dtype"]) for c in ctxs]
    infos = activation_cache.write_activations(
        targets, ctxs[0].inputs["model"], ctxs[0].inputs["tokens"], params["model_dtype"],
        params["drop_first_position"], int(settings.get("batch_size", 8)), int(settings.get("chunk_tokens", 16384)),
        resolve_device(settings.get("device", "auto")), desc=f"activations {first['name'].rsplit('/', 1)[0]}")
    for c in ctxs:
        c.info.update(infos[c.spec["params"]["layer"]])


#: Bytes per stored element of each activations dtype.
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
#: ``auto`` caches a group whose train activations are at most this many GB (docstring).
DEFAULT_CACHE_BUDGET_GB = 200


def activation_params(layer: int, dtype: str, model_dtype: str, drop_first_position: bool) -> dict:
    """The key-covered parameters of one layer's activations (the sae stage keys the same
    facts, so it can name the artifact it would read: :func:`randsae.stages.sae.cached_activations`)."""
    return {"layer": layer, "dtype": dtype, "model_dtype": model_dtype, "drop_first_position": drop_first_position}


def train_activation_bytes(cfg: Config, mname: str) -> int | None:
    """Size of one variant's train activations of model ``mname``, every hooked layer:
    rows (sequences x positions kept) x d_model x dtype bytes x layers. None when the width
    is unknown (not a known model, no ``models.<m>.d_model``, no readable local config.json)."""
    from randsae.checks import model_shape  # reads a local config.json: only when planning

    m = cfg["models"][mname]
    width = model_shape(m).d_model
    if width is None:
        return None
    act, split = cfg["activations"], cfg["corpus"]["splits"]["train"]
    ctx = split.get("ctx_len", 256)
    rows = (split["tokens"] // ctx) * (ctx - (1 if act.get("drop_first_position", True) else 0))
    return rows * width * DTYPE_BYTES[act.get("dtype", "bfloat16")] * len(m["layers"])


def caches(cfg: Config, mname: str) -> bool:
    """Whether the plan caches the train activations of model ``mname``'s groups."""
    ex = cfg.get("execution", {}).get("activations", {})
    mode = ex.get("cache", "auto")
    if mode in ("always", "never"):
        return mode == "always"
    nbytes = train_activation_bytes(cfg, mname)
    return nbytes is not None and nbytes <= ex.get("cache_budget_gb", DEFAULT_CACHE_BUDGET_GB) * 1e9


def expand(cfg: Config, so_far: PlanSoFar) -> Iterator[Planned]:
    """Per model variant and hooked layer: the train split's activations, for the models whose
    groups cache (:func:`caches`)."""
    act = cfg["activations"]
    for mname, m in cfg["models"].items():
        if not caches(cfg, mname):
            continue
        tokens = so_far.find("tokens", model=mname, split="train")
        for variant in cfg["variants"]:
            model = so_far.find("model", model=mname, variant=variant)
            for layer in m["layers"]:
                params = activation_params(layer, act["dtype"], m["dtype"], act["drop_first_position"])
                yield Planned(f"{mname}/{variant}/L{layer}", params, {"model": model, "tokens": tokens},
                              {"model": mname, "variant": variant, "layer": layer})


#: One job per (model variant, train tokens): every layer in one forward pass.
group = group_by_inputs("model", "tokens")


STAGE = StageDef(
    name="activations",
    version=1,
    doc="residual-stream activations of the train split at one layer (only where the config caches them)",
    inputs={"model": "model", "tokens": "tokens"},
    expand=expand,
    resources=Resources(mem_mb=16000, runtime=240, gpus=1),
    outputs=(OutputFile("acts.zarr", "[n_rows, d_model] activations in the stored dtype (bf16 as raw uint16)"),),
    run_group=run_group,
    group=group,
    priority=2,  # on the longest chain: start before the short jobs (StageDef.priority)
)
