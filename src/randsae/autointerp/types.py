"""Data types shared by the auto-interpretability stages.

Why one module: the examples stage (written elsewhere) produces :class:`LatentExamples`, the
explain and score stages consume them, and the clients consume :class:`Prompt`. Keeping these
plain, JSON-serialisable dataclasses in one place lets each stage write its output as JSON or
Parquet and lets another process read it back without importing torch or a client SDK.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Quantile index of a non-activating example (activating examples use 0..n_quantiles-1).
NON_ACTIVATING = -1


@dataclass(frozen=True)
class Example:
    """One window of tokens with the latent's activation at every token.

    ``tokens`` are decoded token strings (one per position, so their concatenation is the
    window's text); ``activations`` has the same length. ``quantile`` is the activation
    quantile the window was sampled from (0 = the lowest-activating bin, ``n_quantiles - 1``
    the highest), or :data:`NON_ACTIVATING` for a window in which the latent never fires.
    ``token_ids`` and ``source`` (sequence index, start position in the interp split) are
    optional provenance, kept so a result can be traced back to the corpus.
    """

    tokens: tuple[str, ...]
    activations: tuple[float, ...]
    latent: int
    quantile: int = NON_ACTIVATING
    activating: bool = False
    token_ids: tuple[int, ...] | None = None
    source: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        # Accept lists (the natural output of numpy/zarr code) but store tuples: frozen and hashable.
        object.__setattr__(self, "tokens", tuple(str(t) for t in self.tokens))
        object.__setattr__(self, "activations", tuple(float(a) for a in self.activations))
        if self.token_ids is not None:
            object.__setattr__(self, "token_ids", tuple(int(t) for t in self.token_ids))
        if self.source is not None:
            object.__setattr__(self, "source", (int(self.source[0]), int(self.source[1])))
        if len(self.tokens) != len(self.activations):
            raise ValueError(
                f"example of latent {self.latent}: {len(self.tokens)} tokens but "
                f"{len(self.activations)} activations"
            )
        if self.token_ids is not None and len(self.token_ids) != len(self.tokens):
            raise ValueError(f"example of latent {self.latent}: token_ids length differs from tokens")
        if any(not math.isfinite(a) for a in self.activations):
            raise ValueError(f"example of latent {self.latent}: non-finite activation")
        if self.activating and self.quantile < 0:
            raise ValueError(f"activating example of latent {self.latent} needs a quantile >= 0")
        if not self.activating and self.quantile != NON_ACTIVATING:
            raise ValueError(f"non-activating example of latent {self.latent} must have quantile -1")

    @property
    def max_activation(self) -> float:
        return max(self.activations, default=0.0)

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "tokens": list(self.tokens),
            "activations": list(self.activations),
            "latent": self.latent,
            "quantile": self.quantile,
            "activating": self.activating,
        }
        if self.token_ids is not None:
            d["token_ids"] = list(self.token_ids)
        if self.source is not None:
            d["source"] = list(self.source)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Example:
        return cls(
            tokens=tuple(d["tokens"]),
            activations=tuple(d["activations"]),
            latent=int(d["latent"]),
            quantile=int(d.get("quantile", NON_ACTIVATING)),
            activating=bool(d.get("activating", False)),
            token_ids=tuple(d["token_ids"]) if d.get("token_ids") is not None else None,
            source=(int(d["source"][0]), int(d["source"][1])) if d.get("source") is not None else None,
        )


@dataclass(frozen=True)
class LatentExamples:
    """Everything the explainer and the scorers need for one latent.

    ``explainer``: examples shown to the explainer (quantile sampled, activating).
    ``test``: activating held-out examples, each with its quantile.
    ``non_activating``: random windows where the latent is zero (the negatives).
    ``meta``: free-form JSON-able provenance (e.g. activation count, firing frequency).
    """

    latent: int
    explainer: tuple[Example, ...]
    test: tuple[Example, ...]
    non_activating: tuple[Example, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("explainer", "test", "non_activating"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for ex in (*self.explainer, *self.test, *self.non_activating):
            if ex.latent != self.latent:
                raise ValueError(f"LatentExamples({self.latent}) holds an example of latent {ex.latent}")
        if any(not ex.activating for ex in (*self.explainer, *self.test)):
            raise ValueError(f"latent {self.latent}: explainer and test examples must be activating")
        if any(ex.activating for ex in self.non_activating):
            raise ValueError(f"latent {self.latent}: non_activating examples must not be activating")

    def to_dict(self) -> dict[str, Any]:
        return {
            "latent": self.latent,
            "explainer": [e.to_dict() for e in self.explainer],
            "test": [e.to_dict() for e in self.test],
            "non_activating": [e.to_dict() for e in self.non_activating],
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatentExamples:
        return cls(
            latent=int(d["latent"]),
            explainer=tuple(Example.from_dict(e) for e in d["explainer"]),
            test=tuple(Example.from_dict(e) for e in d["test"]),
            non_activating=tuple(Example.from_dict(e) for e in d["non_activating"]),
            meta=dict(d.get("meta", {})),
        )


@dataclass(frozen=True)
class Prompt:
    """A request to a judge/explainer model, client independent.

    The fields follow what can be cached: ``system`` holds instructions shared by every call of
    one kind (the first prompt-cache breakpoint), ``context`` the part shared by the calls of
    one latent (e.g. the explanation under test; the second breakpoint), and ``user`` this
    call's own content (the examples). A client without system prompts or prompt caching
    simply concatenates them.

    ``cues`` serve clients that read answer probabilities from logits: item *i*'s probability is
    read at the position right after the assistant turn has been started with ``cues[i]``.
    ``n_items`` is how many answers the prompt asks for (``len(cues)`` when cues are given).
    ``prefill`` starts the assistant's reply (only for clients that support it).
    """

    system: str
    user: str
    context: str = ""
    cues: tuple[str, ...] = ()
    n_items: int = 1
    prefill: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "cues", tuple(self.cues))
        if self.cues and len(self.cues) != self.n_items:
            raise ValueError(f"prompt has {len(self.cues)} cues but n_items={self.n_items}")

    @property
    def user_text(self) -> str:
        """context + user, for clients that take a single user message."""
        return f"{self.context}\n\n{self.user}" if self.context else self.user

    def to_dict(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "context": self.context,
            "user": self.user,
            "cues": list(self.cues),
            "n_items": self.n_items,
            "prefill": self.prefill,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Prompt:
        return cls(
            system=d["system"],
            user=d["user"],
            context=d.get("context", ""),
            cues=tuple(d.get("cues", ())),
            n_items=int(d.get("n_items", 1)),
            prefill=d.get("prefill", ""),
        )


def examples_to_json(bundles: Sequence[LatentExamples]) -> list[dict[str, Any]]:
    """A list of bundles as JSON-able dicts (the examples stage's file format)."""
    return [b.to_dict() for b in bundles]


def examples_from_json(data: Sequence[Mapping[str, Any]]) -> list[LatentExamples]:
    return [LatentExamples.from_dict(d) for d in data]
