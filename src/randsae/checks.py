"""What the plan can know before any job runs (randsae issue 15): checked in one place, by
``randsae plan`` and the Snakefile's parse (:func:`preflight`).

Each problem is one line naming its key path. The checks need facts the schema cannot see:
a model's depth and width (``randsae.plan.KNOWN_MODELS``, else a local directory's
config.json, else unchecked), the sizes of the splits, and whether ANTHROPIC_API_KEY is set
(its presence only; the value is never read into a message).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from randsae.config import Config, ConfigError, as_list
from randsae.enums import SPLITS_IN_ORDER
from randsae.fingerprint import FingerprintCache
from randsae.inputs import local_revision_dir, pin

# config.json names of depth and width across architectures (Llama/NeoX, GPT-2, T5-style)
_DEPTH_FIELDS = ("num_hidden_layers", "n_layer", "num_layers")
_WIDTH_FIELDS = ("hidden_size", "n_embd", "d_model")


class ModelShape(NamedTuple):
    d_model: int | None  # None: unknown, width checks are skipped
    n_blocks: int | None  # None: unknown, layer checks are skipped


def model_shape(m: Mapping[str, Any]) -> ModelShape:
    """Width and depth of a configured model, as far as they can be known without loading it."""
    from randsae.plan import KNOWN_MODELS  # the plan imports every stage: only when checking

    src = m["source"]
    ident = (src.get("name") or src.get("id") or "").removesuffix("-deduped")
    width, depth = KNOWN_MODELS.get(ident, (None, None))
    if src["kind"] == "local":
        hf = _read_config_json(local_revision_dir(Path(src["path"]), src.get("revision")) / "config.json")
        width = _first_int(hf, _WIDTH_FIELDS) or width
        depth = _first_int(hf, _DEPTH_FIELDS) or depth
    return ModelShape(m.get("d_model") or width, depth)


def _read_config_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a missing or broken config.json is reported by pinning or by the load
    return data if isinstance(data, dict) else {}


def _first_int(d: Mapping[str, Any], names: tuple[str, ...]) -> int | None:
    for n in names:
        v = d.get(n)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def _grid_path(section: str, key: str, values: Any, i: int) -> str:
    return f"{section}.{key}[{i}]" if isinstance(values, list) else f"{section}.{key}"


def plan_problems(cfg: Config, env: Mapping[str, str] | None = None) -> list[str]:
    """Every problem the plan can know of a normalised (and pinned) config, one line each."""
    env = os.environ if env is None else env
    problems: list[str] = []
    sae = cfg["sae"]
    for name, m in cfg["models"].items():
        shape = model_shape(m)
        if shape.n_blocks is not None:
            for i, layer in enumerate(m["layers"]):
                if layer >= shape.n_blocks:
                    problems.append(f"models.{name}.layers[{i}]: {layer} is past the last block "
                                    f"(the model has {shape.n_blocks} blocks, 0..{shape.n_blocks - 1})")
        if shape.d_model is not None:
            for i, k in enumerate(as_list(sae["k"])):
                for expansion in as_list(sae["expansion"]):
                    n_latents = expansion * shape.d_model
                    if k >= n_latents:
                        problems.append(f"{_grid_path('sae', 'k', sae['k'], i)}: {k} is not below the number of latents "
                                        f"of models.{name} with sae.expansion {expansion} "
                                        f"({expansion} x d_model {shape.d_model} = {n_latents})")
        kind = m["source"]["kind"]
        if m.get("step0_revision") is not None and kind not in ("hub", "local"):
            problems.append(f"models.{name}.step0_revision: a {kind} source has no revisions; use null "
                            f"(the architecture's initialiser)")
    splits = cfg["corpus"]["splits"]
    for split in SPLITS_IN_ORDER:
        tokens, ctx_len = splits[split]["tokens"], splits[split]["ctx_len"]
        if tokens < ctx_len:
            problems.append(f"corpus.splits.{split}.tokens: {tokens} is less than one sequence of "
                            f"corpus.splits.{split}.ctx_len = {ctx_len} tokens; ask for at least {ctx_len}")
    ai = cfg["autointerp"]
    interp_ctx = splits["interp"]["ctx_len"]
    if ai["window"] > interp_ctx:
        problems.append(f"autointerp.window: {ai['window']} is longer than corpus.splits.interp.ctx_len = {interp_ctx} "
                        f"(a window never crosses a sequence, so it would be cut to {interp_ctx} tokens)")
    if ai["client"] == "anthropic" and not env.get("ANTHROPIC_API_KEY"):
        problems.append("autointerp.client: 'anthropic' needs ANTHROPIC_API_KEY in the environment, and it is not set; "
                        "export it, or set autointerp.client: local")
    return problems


def check_plan(cfg: Config, env: Mapping[str, str] | None = None) -> None:
    """Raise ConfigError listing every :func:`plan_problems` line."""
    problems = plan_problems(cfg, env)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def preflight(cfg: Config, *, env: Mapping[str, str] | None = None, base: Path | None = None,
              cache: FingerprintCache | None = None) -> Config:
    """The normalised config pinned to its input files (:func:`randsae.inputs.pin`) and
    checked (:func:`plan_problems`): raises ConfigError listing every problem of both."""
    pinned = pin(cfg, base=base, cache=cache)
    problems = pinned.problems + plan_problems(pinned.cfg, env)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    return pinned.cfg
