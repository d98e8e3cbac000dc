"""Explainers: a latent's explainer examples -> a short natural-language explanation.

Why ``ok=False`` instead of exceptions: one latent's failed explanation (API error, refusal,
unparseable text) must not stop a job over a hundred latents, and the failure itself is data
(how often does the judge refuse on random-model latents?). The scorers skip failed
explanations; the DuckDB table keeps the reason.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from randsae.autointerp.clients import Client, Completion, GenParams, Usage
from randsae.autointerp.parsing import MAX_EXPLANATION_CHARS, parse_explanation
from randsae.autointerp.prompts import explainer_prompt
from randsae.autointerp.types import LatentExamples


@dataclass(frozen=True)
class ExplanationResult:
    """One latent's explanation (or failure) with the provenance every row records."""

    latent: int
    explanation: str
    ok: bool
    reason: str = ""
    explainer: str = ""
    client: str = ""
    model: str = ""
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = 0.0
    cached: bool = False
    raw: str = ""
    #: The failure's kind ("" on success; see :func:`randsae.autointerp.clients.failure_class`).
    error_kind: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["usage"] = asdict(self.usage)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExplanationResult:
        d = dict(d)
        d["usage"] = Usage(**d.get("usage", {}))
        return cls(**d)


class Explainer(Protocol):
    """Something that explains latents; failures are results, never exceptions."""

    name: str

    def explain(self, bundles: Sequence[LatentExamples]) -> list[ExplanationResult]: ...


class LLMExplainer:
    """A delphi-style LLM explainer (prompt: :func:`randsae.autointerp.prompts.explainer_prompt`)."""

    name = "llm"

    def __init__(self, client: Client, *, max_tokens: int = 256, max_chars: int = MAX_EXPLANATION_CHARS) -> None:
        self.client = client
        self.params = GenParams(max_tokens=max_tokens)
        self.max_chars = max_chars

    def explain(self, bundles: Sequence[LatentExamples]) -> list[ExplanationResult]:
        prefill = bool(self.client.supports_prefill)
        prompts = [explainer_prompt(b.explainer, prefill=prefill) for b in bundles]
        try:
            completions = self.client.complete_many(prompts, self.params)
        except Exception as err:  # noqa: BLE001 - a broken client still yields results
            reason = f"client error: {type(err).__name__}"
            completions = [
                Completion.failure("api", reason, client=self.client.name, model=self.client.model) for _ in prompts
            ]
        return [self._result(b, c, prefill) for b, c in zip(bundles, completions, strict=True)]

    def _result(self, bundle: LatentExamples, c: Completion, prefill: bool) -> ExplanationResult:
        meta: dict[str, Any] = {
            "explainer": self.name,
            "client": c.client or self.client.name,
            "model": c.model or self.client.model,
            "usage": c.usage,
            "cost_usd": c.cost_usd,
            "cached": c.cached,
            "raw": c.text,
        }
        if not bundle.explainer:
            return ExplanationResult(bundle.latent, "", False, "no explainer examples", error_kind="no_input", **meta)
        if not c.ok:
            return ExplanationResult(bundle.latent, "", False, f"{c.error_kind}: {c.reason}", error_kind=c.error_kind,
                                     **meta)
        parsed = parse_explanation(c.text, prefilled=prefill, max_chars=self.max_chars)
        if not parsed.ok:
            return ExplanationResult(bundle.latent, "", False, f"{parsed.kind}: {parsed.reason}",
                                     error_kind=parsed.kind or "parse", **meta)
        return ExplanationResult(bundle.latent, parsed.value, True, **meta)


#: How a token-list explanation starts (``the tokens "apple", "pie"``); see :func:`format_token_list`.
TOKEN_LIST_PREFIX = "the tokens "
_TOKEN_SEP = '", "'


def format_token_list(tokens: Sequence[str]) -> str:
    """The :class:`TokenListExplainer`'s explanation text for ``tokens`` (in rank order)."""
    return TOKEN_LIST_PREFIX + ", ".join(f'"{t}"' for t in tokens)


def parse_token_list(text: str) -> tuple[str, ...] | None:
    """The tokens of an explanation in :func:`format_token_list`'s format, or None for any other
    text (a free-text explanation). Kept beside the formatter so the two cannot drift: the
    lexical scorer reads token-list explanations back with it. A token containing ``", "`` would
    split in two; a stripped single token practically never does."""
    head = TOKEN_LIST_PREFIX + '"'
    if not (text.startswith(head) and text.endswith('"') and len(text) > len(head)):
        return None
    tokens = tuple(text[len(head) : -1].split(_TOKEN_SEP))
    return tokens if all(tokens) and format_token_list(tokens) == text else None


def token_mass(bundle: LatentExamples) -> dict[str, float]:
    """Activation mass per token over the latent's explainer examples: the sum of the latent's
    positive activations at each position, keyed by the position's token stripped of
    surrounding whitespace (so " apple" and "apple" are one token). What the token-list
    explainer ranks by, and what the lexical scorer weights its tokens by."""
    mass: dict[str, float] = defaultdict(float)
    for ex in bundle.explainer:
        for tok, act in zip(ex.tokens, ex.activations, strict=True):
            key = tok.strip()
            if key and act > 0:
                mass[key] += act
    return dict(mass)


class TokenListExplainer:
    """Deterministic baseline: the latent's top tokens by summed activation over its explainer
    examples. Why: it shows how much of a score a pure token-lookup "explanation" earns, which
    is the paper's point about random models (their latents are largely token detectors)."""

    name = "token_list"

    def __init__(self, n_tokens: int = 10) -> None:
        self.n_tokens = n_tokens

    def top_tokens(self, bundle: LatentExamples) -> list[str]:
        ranked = sorted(token_mass(bundle).items(), key=lambda kv: (-kv[1], kv[0]))
        return [tok for tok, _ in ranked[: self.n_tokens]]

    def explain(self, bundles: Sequence[LatentExamples]) -> list[ExplanationResult]:
        out = []
        for b in bundles:
            tokens = self.top_tokens(b)
            if not tokens:
                out.append(ExplanationResult(b.latent, "", False, "no activating tokens", explainer=self.name,
                                             client="none", model="token_list", error_kind="no_input"))
                continue
            text = format_token_list(tokens)
            out.append(ExplanationResult(b.latent, text, True, explainer=self.name, client="none", model="token_list"))
        return out
