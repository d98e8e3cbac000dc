"""The lexical scorer's arithmetic: an explanation and a window -> P(activating), with no LLM.

Why it exists: it is the default scorer when no LLM client is configured, and a baseline next
to an LLM judge. It asks only "do the window's tokens (or words) match the explanation's?",
so a high AUROC says the latent is largely a token detector: its activations are predicted
by token identity alone, which is the paper's point about latents of randomised models.

Definition (docs/autointerp.md, "Lexical scorer", says the same):

- **Token-list explanation** (exactly the ``token_list`` explainer's format,
  ``the tokens "t1", "t2", ...``; :func:`randsae.autointerp.explainers.parse_token_list`).
  Each listed token *t* gets the weight ``w_t = m_t / sum_u m_u``, its share of the
  activation mass ``m`` over the listed tokens, where ``m`` is measured on the explainer
  examples of the latent the explanation belongs to, as the explainer measured it
  (:func:`~randsae.autointerp.explainers.token_mass`). When that latent's examples are not at
  hand, or give the listed tokens no mass, every listed token weighs ``1/n``. A window's
  coverage ``s`` is the sum of ``w_t`` over the *distinct* listed tokens among its tokens
  (each stripped of surrounding whitespace, compared exactly: case matters, as it does for
  token identity).
- **Free-text explanation** (anything else). ``W(E)``: the explanation's words (maximal runs
  of letters and digits, lowercased) minus :data:`STOP_WORDS`; ``W(x)`` the same words of
  the window's text (its tokens joined). ``s = |W(E) & W(x)| / |W(E)|`` (0 when ``W(E)`` is
  empty).
- **Probability**: ``p = 0`` when ``s = 0``, else ``p = (1 + s) / 2``. So the prediction
  ``p > 0.5`` says "the window holds at least one listed token (or content word)", and ``p``
  orders windows by how much of the explanation they cover. AUROC needs only that order;
  the map to (0.5, 1] is there so the threshold metrics read naturally.

Everything is exact float arithmetic in a fixed order (weights summed in list order), so the
same inputs give the same bits on every run and machine; a window costs a few set lookups,
so no vectorisation or model is needed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from randsae.autointerp.explainers import parse_token_list, token_mass
from randsae.autointerp.types import Example, LatentExamples

#: Words that carry no content in an explanation: English function words and the vocabulary
#: explanations use to talk about tokens ("the word", "tokens related to"). Kept small on
#: purpose: it only stops every window from matching "the".
STOP_WORDS: frozenset[str] = frozenset((
    # function words
    "a", "an", "the", "and", "or", "of", "to", "in", "on", "at", "for", "with", "by", "from", "as",
    "is", "are", "be", "it", "its", "this", "that", "these", "such", "not", "any", "some", "all",
    "each", "other", "into", "about", "when", "where", "which", "s",
    # how explanations talk about tokens
    "token", "tokens", "word", "words", "phrase", "phrases", "text", "term", "terms", "mention",
    "mentions", "related", "refers", "referring", "including", "especially", "often", "various",
    "specific", "context", "contexts", "usage", "appearing", "appears", "occurrences",
))

_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> set[str]:
    """Lowercased maximal runs of letters and digits (any script), as a set."""
    return set(_WORD.findall(text.lower()))


def content_words(explanation: str) -> frozenset[str]:
    """The explanation's words that can match a window: :func:`words` minus :data:`STOP_WORDS`."""
    return frozenset(words(explanation) - STOP_WORDS)


def token_weights(tokens: Sequence[str], owner: LatentExamples | None) -> dict[str, float]:
    """Listed token -> weight: its share of the listed tokens' activation mass over ``owner``'s
    explainer examples, or ``1/n`` each when there is no such mass (see the module docstring)."""
    listed = list(dict.fromkeys(tokens))  # a token listed twice counts once
    mass = token_mass(owner) if owner is not None else {}
    total = 0.0
    for t in listed:
        total += mass.get(t, 0.0)
    if total > 0:
        return {t: mass.get(t, 0.0) / total for t in listed}
    return {t: 1.0 / len(listed) for t in listed}


def coverage_probability(s: float) -> float:
    """Coverage in [0, 1] -> probability: 0 for no match, else (1 + s) / 2."""
    return 0.0 if s <= 0.0 else (1.0 + s) / 2.0


def token_coverage(weights: Mapping[str, float], example: Example) -> float:
    """Sum of the weights of the distinct listed tokens that occur in the window, in list order."""
    present = {t.strip() for t in example.tokens}
    s = 0.0
    for t, w in weights.items():
        if t in present:
            s += w
    return min(s, 1.0)  # shares summed in float may overshoot 1 by an ulp


def word_coverage(explanation_words: frozenset[str], example: Example) -> float:
    """Share of the explanation's content words found among the window's words."""
    if not explanation_words:
        return 0.0
    return len(explanation_words & words(example.text)) / len(explanation_words)


def lexical_probabilities(explanation: str, examples: Sequence[Example], owner: LatentExamples | None) -> list[float]:
    """P(activating) of each window under ``explanation``. ``owner``: the examples of the latent
    the explanation belongs to (its explainer examples weight a token list; None: equal weights)."""
    listed = parse_token_list(explanation)
    if listed is not None:
        weights = token_weights(listed, owner)
        return [coverage_probability(token_coverage(weights, ex)) for ex in examples]
    wanted = content_words(explanation)
    return [coverage_probability(word_coverage(wanted, ex)) for ex in examples]
