"""The Parquet files of the explain and score stages: one typed row schema each.

- ``explanations.parquet`` (explain): :class:`ExplanationRow`, one per sampled latent;
- ``scores.parquet`` (score): :class:`ScoreRow`, one per judged example;
- ``usage.parquet`` (explain and score): :class:`UsageRow`, one per latent's LLM call(s).

In the results database each file's ``model`` (the LLM) is renamed ``llm_model``, so that
``model`` always names the studied transformer.

The stages build rows with the functions below and write them with
:func:`randsae.rows.write_rows`; the results database takes its column types from the same
classes (:mod:`randsae.results.schemas`), and docs/autointerp.md shows the tables
:func:`randsae.rows.markdown_table` renders from them (a test keeps the two equal).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from randsae.rows import column

if TYPE_CHECKING:  # pragma: no cover - typing only
    from randsae.autointerp.clients import Usage
    from randsae.autointerp.explainers import ExplanationResult
    from randsae.autointerp.scorers import LatentScore

EXPLANATIONS_FILE = "explanations.parquet"
SCORES_FILE = "scores.parquet"
USAGE_FILE = "usage.parquet"


@dataclass(frozen=True)
class ExplanationRow:
    """One explained latent (explanations.parquet)."""

    latent: int = column(pa.int32(), "latent id")
    explanation: str = column(pa.string(), "the explanation (empty when it failed)")
    ok: bool = column(pa.bool_(), "an explanation was obtained")
    reason: str = column(pa.string(), "why not (empty on success)")
    explainer: str = column(pa.string(), "`llm` or `token_list`")
    client: str = column(pa.string(), "`anthropic` or `local` (`none` for `token_list`)")
    model: str = column(pa.string(), "the LLM (`token_list` for that explainer)")
    input_tokens: int = column(pa.int64(), "input tokens of the explanation call (cache reads excluded)")
    output_tokens: int = column(pa.int64(), "output tokens")
    cache_read_tokens: int = column(pa.int64(), "input tokens read from the provider's prompt cache")
    cost_usd: float | None = column(pa.float64(), "cost in USD (null if the model's price is unknown)")


@dataclass(frozen=True)
class ScoreRow:
    """One judged example (scores.parquet)."""

    latent: int = column(pa.int32(), "latent judged")
    scorer: str = column(pa.string(), "`detection`, `fuzzing` or `lexical` (the database takes it from the plan)")
    explanation_source: str = column(pa.string(), "`own` explanation or `control` (another latent's)")
    explanation_latent: int = column(pa.int32(), "the latent whose explanation was shown")
    example_id: int = column(pa.int64(), "example within the latent: test examples first, then non-activating")
    activating: bool = column(pa.bool_(), "true label")
    quantile: int = column(pa.int32(), "activation quantile, -1 for non-activating")
    probability: float | None = column(pa.float64(), "the judge's P(activating) (`lexical`: its overlap score); null when "
                                                     "the call failed")
    prediction: bool | None = column(pa.bool_(), "probability > 0.5; null when the call failed")
    ok: bool = column(pa.bool_(), "the example was judged")
    reason: str = column(pa.string(), "why not (empty on success)")
    client: str = column(pa.string(), "the judge's client (`none` for `lexical`)")
    model: str = column(pa.string(), "the judge LLM (`lexical` for that scorer)")


@dataclass(frozen=True)
class UsageRow:
    """The LLM usage of one latent in one stage (usage.parquet)."""

    stage: str = column(pa.string(), "`explain` or `score`")
    latent: int = column(pa.int32(), "latent the call(s) were for")
    client: str = column(pa.string(), "who answered")
    model: str = column(pa.string(), "the LLM")
    input_tokens: int = column(pa.int64(), "input tokens (cache reads and writes excluded)")
    output_tokens: int = column(pa.int64(), "output tokens")
    cache_read_tokens: int = column(pa.int64(), "input tokens read from the provider's prompt cache")
    cache_write_tokens: int = column(pa.int64(), "input tokens written to the provider's prompt cache")
    cost_usd: float | None = column(pa.float64(), "cost in USD (null if the model's price is unknown)")
    cached: bool = column(pa.bool_(), "served from randsae's response cache (no API call this run; `cost_usd` "
                                      "is as the producing stage recorded it)")


def usage_row(stage: str, latent: int, client: str, model: str, usage: Usage, cost: float | None,
              cached: bool) -> UsageRow:
    return UsageRow(stage=stage, latent=latent, client=client, model=model, input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens, cache_read_tokens=usage.cache_read_tokens,
                    cache_write_tokens=usage.cache_write_tokens, cost_usd=cost, cached=cached)


def explanation_rows(results: Sequence[ExplanationResult]) -> list[ExplanationRow]:
    return [ExplanationRow(latent=r.latent, explanation=r.explanation, ok=r.ok, reason=r.reason,
                           explainer=r.explainer, client=r.client, model=r.model,
                           input_tokens=r.usage.input_tokens, output_tokens=r.usage.output_tokens,
                           cache_read_tokens=r.usage.cache_read_tokens, cost_usd=r.cost_usd)
            for r in results]


def explain_usage_rows(results: Sequence[ExplanationResult]) -> list[UsageRow]:
    return [usage_row("explain", r.latent, r.client, r.model, r.usage, r.cost_usd, r.cached) for r in results]


def score_rows(scores: Sequence[LatentScore]) -> list[ScoreRow]:
    return [ScoreRow(latent=e.latent, scorer=e.scorer, explanation_source=e.explanation_source,
                     explanation_latent=e.explanation_latent, example_id=e.index, activating=e.label,
                     quantile=e.quantile, probability=e.probability, prediction=e.prediction, ok=e.ok,
                     reason=e.reason, client=e.client, model=e.model)
            for s in scores for e in s.examples]


def score_usage_rows(scores: Sequence[LatentScore]) -> list[UsageRow]:
    """One row per (latent, explanation source). ``cached`` is false: a latent's judge calls are
    many prompts, and the score stage does not record which of them the response cache served."""
    return [usage_row("score", s.latent, s.client, s.model, s.usage, s.cost_usd, False) for s in scores]
