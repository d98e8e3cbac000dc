"""Claude prices in one place, as USD per million tokens (MTok).

Why a table here and not a number in the config: cost accounting must agree between the
explain and score stages, the DuckDB ``llm_usage`` table and the estimate in
docs/autointerp.md. Prices are public list prices (standard tier, prompts under 200k tokens)
as of the time of writing; they change, so a caller can pass its own :class:`Price`
(``AnthropicClient(price=...)``). An unknown model gets a cost of ``None`` (not 0), so a
missing price is visible rather than silently free, and the client logs a warning naming the
model when it is built (:func:`unpriced_warning`).

Modifiers (applied to the model's *input* price): a cache write (5-minute TTL) costs 1.25x,
a cache read 0.1x (0.05x on the models whose rate card says so). The Message Batches API
halves every component.

The table is kept in step with the models the installed SDK knows (``anthropic.types.
ModelParam``): a test fails when the SDK names a model that is neither priced here nor listed
in :data:`UNPRICED_MODELS` (models whose rate card was not published where we could check it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from randsae.autointerp.clients import Usage

CACHE_WRITE_MULTIPLIER = 1.25
CACHE_READ_MULTIPLIER = 0.10
BATCH_MULTIPLIER = 0.50


@dataclass(frozen=True)
class Price:
    """USD per million input / output tokens; a cache read costs ``cache_read_multiplier``
    times the input price."""

    input_per_mtok: float
    output_per_mtok: float
    cache_read_multiplier: float = CACHE_READ_MULTIPLIER


_OPUS_NEW = Price(5.0, 25.0)
_OPUS_OLD = Price(15.0, 75.0)
_SONNET = Price(3.0, 15.0)
_SONNET_5 = Price(2.0, 10.0)

#: Model name (date suffix removed) -> list price. Sources: the model pages and the pricing
#: page of platform.claude.com as stored on 2026-12 (Opus 5.5: cache reads $0.20 = 0.05x input).
PRICES: dict[str, Price] = {
    "claude-opus-5-5": Price(4.0, 20.0, 0.05),
    "claude-opus-5": _OPUS_NEW,
    "claude-sonnet-5-5": _SONNET_5,
    "claude-sonnet-5": _SONNET_5,
    "claude-sonnet-4-6": _SONNET,
    "claude-opus-4-6": _OPUS_NEW,
    "claude-opus-4-5": _OPUS_NEW,
    "claude-opus-4-1": _OPUS_OLD,
    "claude-opus-4-0": _OPUS_OLD,
    "claude-opus-4": _OPUS_OLD,
    "claude-sonnet-4-5": _SONNET,
    "claude-sonnet-4-0": _SONNET,
    "claude-sonnet-4": _SONNET,
    "claude-3-7-sonnet": _SONNET,
    "claude-haiku-4-5": Price(1.0, 5.0),
    "claude-3-5-haiku": Price(0.80, 4.0),
    "claude-3-haiku": Price(0.25, 1.25),
}

#: Models the installed SDK knows whose list price we could not confirm from a first-hand
#: source (Haiku 5.5 is priced by prompt length). Using one logs a warning and costs ``None``;
#: pass ``AnthropicClient(price=Price(...))`` to account for it.
UNPRICED_MODELS: frozenset[str] = frozenset({
    "claude-fable-5-2", "claude-fable-5-1", "claude-fable-5",
    "claude-mythos-5-2", "claude-mythos-5-1", "claude-mythos-5", "claude-mythos-preview",
    "claude-haiku-5-5", "claude-opus-4-8", "claude-opus-4-7",
})

_DATE_SUFFIX = re.compile(r"(-\d{8}|-latest)$")


def base_model(model: str) -> str:
    """The table's name of a model id (date suffix and ``-latest`` removed, lower case)."""
    return _DATE_SUFFIX.sub("", model.strip().lower())


def price_for(model: str) -> Price | None:
    """The list price of a model id (``claude-sonnet-4-5-20250929`` -> ``claude-sonnet-4-5``)."""
    return PRICES.get(base_model(model))


def unpriced_warning(model: str, price: Price | None = None) -> str | None:
    """The warning to give when calls to ``model`` will have no cost (``None`` if priced)."""
    if price is not None or price_for(model) is not None:
        return None
    return (f"no price for model {model!r}: its calls get cost_usd = null; add it to "
            "randsae.autointerp.pricing.PRICES or pass AnthropicClient(price=Price(input, output))")


def cost_usd(
    model: str, usage: Usage, *, batch: bool = False, price: Price | None = None
) -> float | None:
    """Cost of one call from its token usage; ``None`` when the model's price is unknown.

    ``usage.input_tokens`` counts only uncached input tokens (as the API reports it); cache
    reads and writes are priced separately.
    """
    p = price or price_for(model)
    if p is None:
        return None
    dollars = (
        usage.input_tokens * p.input_per_mtok
        + usage.cache_write_tokens * p.input_per_mtok * CACHE_WRITE_MULTIPLIER
        + usage.cache_read_tokens * p.input_per_mtok * p.cache_read_multiplier
        + usage.output_tokens * p.output_per_mtok
    ) / 1e6
    return dollars * (BATCH_MULTIPLIER if batch else 1.0)
