"""SAE training configuration: one typed, validated dataclass.

Every field carries its meaning and default in its docstring-comment; docs/sae.md repeats them for
users. Validation happens at construction so that a bad config fails before any data is read, with
an error that names the offending field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

from randsae.errors import RandsaeError

BDecInit = Literal["geometric_median", "mean"]
ComputeDtype = Literal["float32", "bfloat16"]
LrSchedule = Literal["linear_decay", "constant"]


class SaeConfigError(RandsaeError, ValueError):
    """A config field has a bad type or value; the message names the field."""


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class SaeConfig:
    """Hyperparameters of one TopK SAE training run (defaults follow sparsify / the paper)."""

    expansion_factor: int = field(
        default=64, metadata=_doc("n_latents = expansion_factor * d_model (paper: 64).")
    )
    k: int = field(default=32, metadata=_doc("Active latents per token (TopK), paper: 32."))
    seed: int = field(
        default=0,
        metadata=_doc("Seed of the SAE's weight initialisation. Does not affect the data order."),
    )
    data_seed: int = field(
        default=0,
        metadata=_doc(
            "Seed of the shuffle order. Separate from `seed` so SAEs that differ only in `seed` "
            "see identical batches and can be trained together in one pass over the activations."
        ),
    )
    lr: float | None = field(
        default=None,
        metadata=_doc("Peak Adam learning rate; None = 2e-4 / sqrt(n_latents / 2**14) (sparsify)."),
    )
    warmup_steps: int = field(
        default=1000,
        metadata=_doc("Linear warmup from lr/warmup_steps to lr over this many steps."),
    )
    lr_schedule: LrSchedule = field(
        default="linear_decay",
        metadata=_doc(
            "After warmup: 'linear_decay' to zero at the planned last step (sparsify's Adam "
            "schedule, which the paper used) or 'constant'."
        ),
    )
    batch_size: int = field(default=4096, metadata=_doc("Tokens (rows) per optimizer step."))
    grad_clip: float | None = field(
        default=1.0, metadata=_doc("Max global L2 norm of all gradients; None disables clipping.")
    )
    auxk_coef: float = field(
        default=1 / 32,
        metadata=_doc("Weight of the AuxK loss; 0 disables it (the paper trained with AuxK off)."),
    )
    auxk_k: int | None = field(
        default=None, metadata=_doc("Dead latents used by AuxK per token; None = d_model // 2.")
    )
    dead_window_tokens: int = field(
        default=10_000_000,
        metadata=_doc("A latent is dead when it has not fired in this many training tokens."),
    )
    b_dec_init: BDecInit = field(
        default="geometric_median",
        metadata=_doc(
            "How the decoder bias is initialised from the first batch: its geometric median "
            "(robust to the huge-norm outlier tokens of residual streams) or its mean."
        ),
    )
    max_tokens: int | None = field(
        default=None,
        metadata=_doc(
            "Training tokens; None = one pass over the array. Larger than the array: more passes, "
            "each in a fresh shuffle order."
        ),
    )
    shuffle_buffer_tokens: int = field(
        default=262_144,
        metadata=_doc(
            "Rows mixed together by the shuffle (one window of blocks, at least one block). "
            "Memory: about twice this many rows (one window in use, one prefetched)."
        ),
    )
    shuffle_block_sequences: int = field(
        default=64,
        metadata=_doc(
            "Whole sequences per shuffle block, the unit the shuffle reorders before permuting "
            "rows within a window (64 sequences of 255 rows = 16,320 rows). Part of the data "
            "order, so keyed; the Zarr chunk length is not (it only changes I/O speed)."
        ),
    )
    checkpoint_every_steps: int = field(
        default=1000,
        metadata={
            **_doc("Write a resumable checkpoint every this many optimizer steps."),
            # How the run is carried out, not what it computes: left out of to_dict(), so it is
            # in neither cfg.json nor a checkpoint's identity, and a rerun may change it.
            "execution": True,
        },
    )
    log_every_steps: int = field(
        default=10,
        metadata=_doc("One training-log row every this many steps (means over those steps)."),
    )
    dtype: ComputeDtype = field(
        default="float32",
        metadata=_doc(
            "Compute dtype of the dense encoder matmul and top-k selection. Parameters, Adam "
            "state, the sparse decoder and all gradients stay float32."
        ),
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_type(f, getattr(self, f.name))
        _check_values(self)

    # -- derived quantities -------------------------------------------------------------------

    def n_latents(self, d_model: int) -> int:
        return self.expansion_factor * d_model

    def resolved_lr(self, d_model: int) -> float:
        if self.lr is not None:
            return self.lr
        return 2e-4 / math.sqrt(self.n_latents(d_model) / 2**14)

    def resolved_auxk_k(self, d_model: int) -> int:
        return self.auxk_k if self.auxk_k is not None else max(1, d_model // 2)

    def check_for_width(self, d_model: int) -> None:
        """Checks that need d_model (known only once the activations are opened)."""
        n_lat = self.n_latents(d_model)
        if self.k > n_lat:
            raise SaeConfigError(f"k: {self.k} exceeds n_latents = {n_lat}")

    # -- (de)serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every field that determines the result (execution-only fields left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.metadata.get("execution")}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SaeConfig:
        if not isinstance(d, dict):
            raise SaeConfigError(f"SAE config must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SaeConfigError(f"unknown SAE config field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def replace(self, **changes: Any) -> SaeConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def field_docs(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("doc", "") for f in fields(cls)}


_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
}


def _check_type(f: dataclasses.Field, value: Any) -> None:
    """Check one field against its annotation (the subset of annotations used above)."""
    ann = str(f.type)
    optional = "None" in ann
    if value is None:
        if optional:
            return
        raise SaeConfigError(f"{f.name}: must not be None")
    literals = {"BDecInit": BDecInit, "ComputeDtype": ComputeDtype, "LrSchedule": LrSchedule}
    if ann in literals:
        allowed = get_args(literals[ann])
        if value not in allowed:
            raise SaeConfigError(f"{f.name}: {value!r} is not one of {list(allowed)}")
        return
    base = ann.split("|")[0].strip()
    if isinstance(value, bool) or not isinstance(value, _TYPES[base]):
        raise SaeConfigError(f"{f.name}: expected {base}, got {type(value).__name__} {value!r}")
    if base == "float" and not math.isfinite(value):  # type: ignore[arg-type]
        raise SaeConfigError(f"{f.name}: must be finite, got {value!r}")


def _check_values(c: SaeConfig) -> None:
    positive = [
        "expansion_factor",
        "k",
        "batch_size",
        "dead_window_tokens",
        "shuffle_buffer_tokens",
        "shuffle_block_sequences",
        "checkpoint_every_steps",
        "log_every_steps",
    ]
    for name in positive:
        if getattr(c, name) < 1:
            raise SaeConfigError(f"{name}: must be >= 1, got {getattr(c, name)}")
    for name in ("seed", "data_seed", "warmup_steps"):
        if getattr(c, name) < 0:
            raise SaeConfigError(f"{name}: must be >= 0, got {getattr(c, name)}")
    if c.lr is not None and c.lr <= 0:
        raise SaeConfigError(f"lr: must be > 0, got {c.lr}")
    if c.grad_clip is not None and c.grad_clip <= 0:
        raise SaeConfigError(f"grad_clip: must be > 0 or None, got {c.grad_clip}")
    if c.auxk_coef < 0:
        raise SaeConfigError(f"auxk_coef: must be >= 0, got {c.auxk_coef}")
    if c.auxk_k is not None and c.auxk_k < 1:
        raise SaeConfigError(f"auxk_k: must be >= 1 or None, got {c.auxk_k}")
    if c.max_tokens is not None and c.max_tokens < c.batch_size:
        raise SaeConfigError(
            f"max_tokens: {c.max_tokens} is smaller than one batch ({c.batch_size} tokens)"
        )
