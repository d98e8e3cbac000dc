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

The compute is :func:`randsae.activation_cache.write_activations` (over the shared forward
loop, :mod:`randsae.forward`); this module only plans and reads the execution settings, so
importing it stays cheap.
"""

from __future__ import annotations

from collections.abc import Iterator

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


def expand(cfg: Config, so_far: PlanSoFar) -> Iterator[Planned]:
    """Per model variant and hooked layer: the train split's activations."""
    act = cfg["activations"]
    for mname, m in cfg["models"].items():
        tokens = so_far.find("tokens", model=mname, split="train")
        for variant in cfg["variants"]:
            model = so_far.find("model", model=mname, variant=variant)
            for layer in m["layers"]:
                params = {"layer": layer, "dtype": act["dtype"], "model_dtype": m["dtype"],
                          "drop_first_position": act["drop_first_position"]}
                yield Planned(f"{mname}/{variant}/L{layer}", params, {"model": model, "tokens": tokens},
                              {"model": mname, "variant": variant, "layer": layer})


def group(a: Artifact) -> str:
    """One job per (model variant, train tokens): every layer in one forward pass."""
    return f"{a.inputs['model']}-{a.inputs['tokens']}"


STAGE = StageDef(
    name="activations",
    version=1,
    doc="residual-stream activations of the train split at one layer",
    inputs={"model": "model", "tokens": "tokens"},
    expand=expand,
    resources=Resources(mem_mb=16000, runtime=240, gpus=1),
    outputs=(OutputFile("acts.zarr", "[n_rows, d_model] activations in the stored dtype (bf16 as raw uint16)"),),
    run_group=run_group,
    group=group,
)
