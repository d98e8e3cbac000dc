"""Stage ``sae``: one TopK SAE trained on one layer's activations.

Output (see docs/sae.md): sae.safetensors, cfg.json, train_log.parquet, train_summary.json.
Checkpoints live in the artifact's partial directory while training, so a killed job
resumes from its last checkpoint (bitwise-identical result on CPU); they are removed
before publication.
"""

from __future__ import annotations

import os
import shutil

from randsae.stages import StageContext

CHECKPOINTS = "checkpoints"
# config key (schema) -> SaeConfig field, where the names differ
_RENAMED = {"expansion": "expansion_factor"}


def sae_config(params: dict, checkpoint_every_steps: int = 1000):
    from randsae.sae.config import SaeConfig

    fields = {_RENAMED.get(k, k): v for k, v in params.items()}
    return SaeConfig.from_dict({**fields, "checkpoint_every_steps": checkpoint_every_steps})


def run(ctx: StageContext) -> None:
    from randsae.sae.trainer import train_sae

    every = int(os.environ.get("RANDSAE_CHECKPOINT_EVERY", "1000"))
    cfg = sae_config(ctx.params, every)
    ckpt = ctx.workdir / CHECKPOINTS
    result = train_sae(ctx.inputs["activations"] / "acts.zarr", ctx.workdir, cfg, ckpt)
    shutil.rmtree(ckpt, ignore_errors=True)
    ctx.info.update({k: v for k, v in result._asdict().items() if k != "out_dir" and isinstance(v, int | float | str | bool)})
