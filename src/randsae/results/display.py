"""How results show variants and scorers: their order and colours, in one place.

The order is the enumeration's own (:mod:`randsae.enums`: trained first, then the random
variants as the paper lists them); names a newer store may hold that this code does not know
follow, alphabetically. Figures sort with :func:`variant_sort_key`, SQL sorts with the
``variant_order(variant)`` macro the database defines from :func:`variant_order_macro_sql`
(so the report and the example queries need no list of their own).
"""

from __future__ import annotations

from collections.abc import Iterable

from randsae.enums import SCORERS, TRAINED, VARIANTS

#: Variants in display order (trained first).
VARIANT_ORDER: tuple[str, ...] = VARIANTS
#: The random variants in display order (those compared with trained).
RANDOM_VARIANTS: tuple[str, ...] = tuple(v for v in VARIANTS if v != TRAINED)
#: Scorers in display order.
SCORER_ORDER: tuple[str, ...] = SCORERS

#: One colour per variant (matplotlib's tab10 hues; trained black, so it stands out).
VARIANT_COLORS: dict[str, str] = {
    "trained": "#000000",
    "step0": "#1f77b4",
    "rerandomized": "#d62728",
    "rerandomized_no_embed": "#ff7f0e",
    "control": "#2ca02c",
}
if set(VARIANT_COLORS) != set(VARIANTS):  # pragma: no cover - a guard for whoever adds a variant
    raise RuntimeError(f"VARIANT_COLORS covers {sorted(VARIANT_COLORS)}, the variants are {VARIANTS}")

#: The SQL macro that ranks a variant name in display order (created in results.duckdb).
VARIANT_ORDER_MACRO = "variant_order"


def variant_sort_key(variant: str) -> tuple[int, str]:
    """Sort key: display order, unknown names last and alphabetical."""
    if variant in VARIANT_ORDER:
        return (VARIANT_ORDER.index(variant), "")
    return (len(VARIANT_ORDER), variant)


def sort_variants(names: Iterable[str]) -> list[str]:
    return sorted(set(names), key=variant_sort_key)


def variant_color(variant: str) -> str | None:
    """The variant's colour; None (matplotlib's next colour) for a name this code does not know."""
    return VARIANT_COLORS.get(variant)


def variant_order_sql(column: str) -> str:
    """A SQL expression ranking ``column`` in display order (unknown names after all known)."""
    whens = " ".join(f"WHEN '{v}' THEN {i}" for i, v in enumerate(VARIANT_ORDER))
    return f"CASE {column} {whens} ELSE {len(VARIANT_ORDER)} END"


def variant_order_macro_sql() -> str:
    """``CREATE MACRO variant_order(v)``: used by ORDER BY clauses of the report and the queries."""
    return f"CREATE OR REPLACE MACRO {VARIANT_ORDER_MACRO}(v) AS {variant_order_sql('v')}"
