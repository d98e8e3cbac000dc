"""The five model variants of the paper (docs/variants.md), each seeded and reproducible.

- ``trained``: the source's weights, untouched.
- ``step0``: the initialisation checkpoint (a revision of the source) or, without one, the
  architecture's own initialiser under ``torch.manual_seed(seed)``.
- ``rerandomized``: every parameter tensor redrawn i.i.d. from N(mean, std) of its own trained
  values. 1-D tensors (norm gains, biases) are treated exactly like matrices, so a gain vector
  with spread ~0 stays ~constant at its mean and a constant tensor stays constant. Buffers
  (rotary frequencies, causal masks) are not parameters and are left alone.
- ``rerandomized_no_embed``: as rerandomized, but every parameter of the input-embedding module
  and of the output-embedding (unembedding) module keeps its trained value bit for bit.
- ``control``: trained weights; at every forward pass a hook replaces the output of the input
  embedding with fresh N(0, 1) noise.

Tied input/output embeddings are one ``nn.Parameter``; ``named_parameters()`` yields it once,
so it is redrawn once (rerandomized) or kept (no_embed) and stays tied.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from randsae.enums import VARIANTS  # defined once, torch-free (config loading reads it)
from randsae.models.arch import get_input_embedding
from randsae.models.sources import SourceSpec, load_config, load_model, with_revision

_CONTROL_ATTR = "_randsae_control"


def check_variant(variant: str) -> str:
    """Fail early on a misspelt variant name."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown model variant {variant!r}; expected one of {VARIANTS}")
    return variant


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from a stable hash of ``parts`` (not Python's salted ``hash``), so that
    each tensor's or batch's draws depend only on its own identity."""
    digest = hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


# --- weight variants -------------------------------------------------------------------


def apply_variant(model: PreTrainedModel, variant: str, seed: int) -> dict[str, Any]:
    """Turn a trained model into ``variant`` in place (all variants but step0, which needs the
    source). Returns the facts a reader needs about what was done."""
    check_variant(variant)
    if variant == "step0":
        raise ValueError("step0 is built from the source: use make_step0")
    if variant == "rerandomized":
        return {"rerandomization": rerandomize_(model, seed)}
    if variant == "rerandomized_no_embed":
        return {"rerandomization": rerandomize_(model, seed, keep=embedding_param_names(model))}
    if variant == "control":
        install_control_hook(model, seed)
    return {}


def rerandomize_(
    model: nn.Module, seed: int, keep: set[str] | frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Redraw every floating parameter not in ``keep`` from N(its mean, its std), in place.

    The generator of each tensor is seeded from (seed, parameter name), so keeping, adding or
    reordering parameters never shifts another tensor's draws.
    """
    redrawn = 0
    for name, param in model.named_parameters():  # tied tensors appear once
        if name in keep or not param.is_floating_point():
            continue
        redraw_gaussian_(param, derive_seed(seed, "rerandomize", name))
        redrawn += 1
    return {
        "rule": "i.i.d. N(mean, std) of each parameter tensor's trained values (population std); "
        "1-D tensors alike; buffers untouched",
        "n_tensors_redrawn": redrawn,
        "kept": sorted(keep),
    }


@torch.no_grad()
def redraw_gaussian_(param: torch.Tensor, seed: int) -> None:
    """Replace ``param`` by i.i.d. Gaussian values with its own mean and std.

    Statistics in float64 (exact for big tensors); draws in float32 on a CPU generator, so the
    result is the same on any device; then cast to the parameter's dtype.
    """
    std, mean = torch.std_mean(param.detach().double(), correction=0)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    values = torch.randn(param.shape, generator=gen, dtype=torch.float32)
    values.mul_(float(std)).add_(float(mean))
    param.copy_(values)


def embedding_param_names(model: PreTrainedModel) -> frozenset[str]:
    """Names (as ``named_parameters`` yields them) of the input-embedding and unembedding
    parameters; identity-based, so tying and naming conventions do not matter."""
    modules = [get_input_embedding(model), model.get_output_embeddings()]
    ids = {id(p) for mod in modules if mod is not None for p in mod.parameters()}
    return frozenset(name for name, p in model.named_parameters() if id(p) in ids)


def embeddings_tied(model: PreTrainedModel) -> bool:
    """Whether input embedding and unembedding are one tensor (SmolLM2: yes; Pythia: no)."""
    out = model.get_output_embeddings()
    return out is not None and out.weight is get_input_embedding(model).weight


def embedding_handling(model: PreTrainedModel, variant: str) -> str:
    """One line for variant.json saying what happened to the embeddings."""
    if not embeddings_tied(model):
        return "untied: input embedding and unembedding are separate tensors, treated alike"
    return {
        "rerandomized": "tied: the one shared tensor was redrawn once; still tied",
        "rerandomized_no_embed": "tied: the one shared tensor kept its trained values; still tied",
        "step0": "tied: one shared tensor, as the checkpoint or initialiser made it",
    }.get(variant, "tied: the one shared tensor is unchanged")


# --- step0 -----------------------------------------------------------------------------


def make_step0(
    source: SourceSpec,
    seed: int,
    step0_revision: str | None,
    dtype: torch.dtype | str = "auto",
) -> tuple[PreTrainedModel, dict[str, Any]]:
    """The initialisation checkpoint ``step0_revision`` of the source when given (method
    "revision"), otherwise the architecture's initialiser seeded with ``seed`` (method "init").
    A named revision that cannot be loaded is an error, never a silent fallback."""
    if step0_revision is not None:
        model = load_model(with_revision(source, step0_revision), dtype)
        return model, {"step0_method": "revision", "step0_revision": step0_revision}
    model = init_from_config(load_config(source), seed, dtype)
    return model, {"step0_method": "init", "step0_revision": None}


def init_from_config(
    config: PretrainedConfig, seed: int, dtype: torch.dtype | str = "auto"
) -> PreTrainedModel:
    """A freshly initialised model: same bits for the same seed. The global RNG is forked so
    the caller's random state is unchanged."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.to(_init_dtype(config, dtype))


def _init_dtype(config: PretrainedConfig, dtype: torch.dtype | str) -> torch.dtype:
    """``auto`` means the checkpoint's dtype as the config records it (float32 if none)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != "auto":
        return getattr(torch, dtype)
    # transformers >= 4.56 calls it dtype (torch_dtype is a deprecated alias that warns)
    recorded = config.dtype if hasattr(config, "dtype") else getattr(config, "torch_dtype", None)
    if isinstance(recorded, str):
        recorded = getattr(torch, recorded, None)
    return (
        recorded
        if isinstance(recorded, torch.dtype) and recorded.is_floating_point
        else torch.float32
    )


# --- control ---------------------------------------------------------------------------


class ControlNoise:
    """Forward hook state: replaces the input-embedding output with N(0, 1) noise.

    Two modes. Row seeds (what the stages use, through :func:`control_seed` with
    :func:`control_row_seeds`): row i of the batch gets noise from its own generator seeded
    with ``row_seeds[i]``, so a sequence's noise depends on the sequence, not on the batch it
    happens to share (batch size is an execution setting, never part of an artifact key).
    Stream (``seed``): one generator for the whole batch that advances with every pass, so
    two passes differ unless reseeded. Same seeds and device -> same noise (CPU and CUDA
    generators produce different streams).
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.generator: torch.Generator | None = None
        self.row_seeds: list[int] | None = None
        self.handle: Any = None

    def reseed(self, seed: int | Sequence[int]) -> None:
        if isinstance(seed, int):
            self.seed, self.row_seeds = seed, None
        else:
            self.row_seeds = [int(s) for s in seed]
        self.generator = None

    def __call__(
        self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor
    ) -> torch.Tensor:
        if self.row_seeds is not None:
            if len(self.row_seeds) != output.shape[0]:
                raise ValueError(f"control noise: {len(self.row_seeds)} row seeds for a batch of {output.shape[0]} sequences")
            return torch.stack([
                torch.randn(output.shape[1:], generator=torch.Generator(device=output.device).manual_seed(s),
                            dtype=output.dtype, device=output.device)
                for s in self.row_seeds
            ])
        if self.generator is None or self.generator.device != output.device:
            self.generator = torch.Generator(device=output.device).manual_seed(self.seed)
        return torch.randn(
            output.shape, generator=self.generator, dtype=output.dtype, device=output.device
        )


def install_control_hook(model: PreTrainedModel, seed: int) -> ControlNoise:
    """Make ``model`` the control variant (idempotent: an earlier hook is replaced).

    Applies whenever the embedding module runs, i.e. when the model is called with input_ids;
    a caller passing inputs_embeds bypasses it."""
    remove_control_hook(model)
    state = ControlNoise(seed)
    state.handle = get_input_embedding(model).register_forward_hook(state)
    setattr(model, _CONTROL_ATTR, state)
    return state


def remove_control_hook(model: PreTrainedModel) -> None:
    state = getattr(model, _CONTROL_ATTR, None)
    if state is not None:
        state.handle.remove()
        delattr(model, _CONTROL_ATTR)


def control_state(model: PreTrainedModel) -> ControlNoise | None:
    """The control hook state, or None for a model that is not the control variant."""
    return getattr(model, _CONTROL_ATTR, None)


def set_control_seed(model: PreTrainedModel, seed: int | Sequence[int]) -> None:
    """Reseed the control noise (one seed, or per-row seeds from :func:`control_row_seeds`)."""
    state = control_state(model)
    if state is None:
        raise ValueError("model has no control hook (is it the control variant?)")
    state.reseed(seed)


def control_row_seeds(artifact_seed: int, first_row: int, n_rows: int) -> list[int]:
    """Per-sequence seeds for rows first_row .. first_row + n_rows - 1 of a tokens array: a
    stable hash of (artifact seed, row index), so the noise does not depend on batching."""
    return [derive_seed(artifact_seed, "control", row) for row in range(first_row, first_row + n_rows)]


@contextlib.contextmanager
def control_seed(model: PreTrainedModel, seed: int | Sequence[int]) -> Iterator[None]:
    """Seed the control noise for the passes inside the block (one seed for the batch, or one
    per row, see :func:`control_row_seeds`); afterwards the previous noise
    stream continues as if the block had not run. A no-op for non-control models, so callers
    can wrap every batch without asking which variant they hold."""
    state = control_state(model)
    if state is None:
        yield
        return
    saved = state.seed, state.generator, state.row_seeds  # reseed makes a new generator; this one is untouched
    state.reseed(seed)
    try:
        yield
    finally:
        state.seed, state.generator, state.row_seeds = saved
