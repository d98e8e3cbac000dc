"""Auto-interpretability: explain SAE latents with an LLM and score the explanations.

Protocol and defaults: docs/autointerp.md. Modules: ``types`` (examples, prompts), ``prompts``
(every prompt text, with the injection defence), ``clients`` (the Client protocol and
``default_client``), ``anthropic_client`` and ``local_client`` (backends), ``cache`` (the
response cache), ``parsing`` (robust output parsing), ``explainers``, ``scorers``, ``stats``,
``pricing`` and ``retry``. Backends are imported lazily: importing this package pulls in
neither torch models nor the Anthropic SDK.
"""

from randsae.autointerp.cache import CachedClient, ResponseCache
from randsae.autointerp.clients import (
    AnswerProbabilities,
    Client,
    Completion,
    GenParams,
    Usage,
    choose_client_kind,
    default_client,
)
from randsae.autointerp.explainers import (
    Explainer,
    ExplanationResult,
    LLMExplainer,
    TokenListExplainer,
)
from randsae.autointerp.pricing import PRICES, Price, cost_usd
from randsae.autointerp.retry import RetryPolicy
from randsae.autointerp.scorers import (
    CONTROL,
    OWN,
    DetectionScorer,
    ExampleScore,
    FuzzingScorer,
    LatentScore,
    Scorer,
    control_assignment,
    score_latents,
    summarize_scores,
)
from randsae.autointerp.stats import (
    ScoreSummary,
    auroc,
    binary_metrics,
    bootstrap_auroc_ci,
    summarize,
)
from randsae.autointerp.types import NON_ACTIVATING, Example, LatentExamples, Prompt

__all__ = [
    "CONTROL",
    "NON_ACTIVATING",
    "OWN",
    "PRICES",
    "AnswerProbabilities",
    "CachedClient",
    "Client",
    "Completion",
    "DetectionScorer",
    "Example",
    "ExampleScore",
    "Explainer",
    "ExplanationResult",
    "FuzzingScorer",
    "GenParams",
    "LLMExplainer",
    "LatentExamples",
    "LatentScore",
    "Price",
    "Prompt",
    "ResponseCache",
    "RetryPolicy",
    "ScoreSummary",
    "Scorer",
    "TokenListExplainer",
    "Usage",
    "auroc",
    "binary_metrics",
    "bootstrap_auroc_ci",
    "choose_client_kind",
    "control_assignment",
    "cost_usd",
    "default_client",
    "score_latents",
    "summarize",
    "summarize_scores",
]
