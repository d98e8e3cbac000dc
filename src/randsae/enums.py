"""The project's closed lists of names, each defined once.

Everything that needs one of these lists reads it from here: the config schema's enums and
defaults (:func:`randsae.config.schema` fills them in), the plan, the variant code
(:mod:`randsae.models.variants`), the scorer registry (:mod:`randsae.autointerp.scorers`), and
the results' display order (:mod:`randsae.results.display`).

Why a module of its own and not, say, ``models/variants.py``: loading a config must stay cheap
(the Snakefile and the CLI load one on every start), and the modules that implement variants
and scorers import torch, transformers or scipy. This module imports nothing.
"""

from __future__ import annotations

#: The model variants (docs/variants.md), in the order the paper, the tables and the figures
#: list them. The config's ``variants`` default is all of them, in this order.
VARIANTS: tuple[str, ...] = ("trained", "step0", "rerandomized", "rerandomized_no_embed", "control")
#: The variant every other one is compared with.
TRAINED = "trained"

#: The auto-interp scorers (docs/autointerp.md), in display order. ``autointerp.scorers: auto``
#: (the default) resolves to LLM_SCORERS when an LLM client is configured and to NO_LLM_SCORERS
#: otherwise (:func:`randsae.config.normalise`).
DETECTION = "detection"
FUZZING = "fuzzing"
LEXICAL = "lexical"
SCORERS: tuple[str, ...] = (DETECTION, FUZZING, LEXICAL)
#: The scorers that ask an LLM judge, and the default when one is configured.
LLM_SCORERS: tuple[str, ...] = (DETECTION, FUZZING)
#: The default when no LLM client is configured: the deterministic lexical baseline.
NO_LLM_SCORERS: tuple[str, ...] = (LEXICAL,)

#: The corpus splits, in the order they are carved from the shuffled documents: a split is
#: determined by the sizes of the splits before it, so growing train never moves eval
#: (docs/data.md).
SPLITS_IN_ORDER: tuple[str, ...] = ("eval", "interp", "train")

if TRAINED not in VARIANTS:  # pragma: no cover - a guard for whoever edits the lists
    raise RuntimeError(f"TRAINED ({TRAINED!r}) must be one of VARIANTS {VARIANTS}")
if not set(LLM_SCORERS + NO_LLM_SCORERS) <= set(SCORERS):  # pragma: no cover - likewise
    raise RuntimeError(f"the default scorers must be among SCORERS {SCORERS}")
