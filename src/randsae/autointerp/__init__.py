"""Auto-interpretability: explain SAE latents with an LLM and score the explanations.

Protocol and defaults: docs/autointerp.md. Modules: ``types`` (examples, prompts), ``prompts``
(every prompt text, with the injection defence), ``clients`` (the Client protocol and
shared result types), ``factory`` (``default_client``: the backend a config asks for),
``anthropic_client`` and ``local_client`` (backends), ``cache`` (the
response cache), ``parsing`` (robust output parsing), ``explainers``, ``scorers`` (with
``lexical``, the LLM-free scorer's arithmetic), ``stats``,
``pricing``, ``retry`` and ``outcomes`` (what a job's calls came to; whether it may publish). Backends are imported lazily: importing this package pulls in
neither torch models nor the Anthropic SDK.
"""

from randsae.autointerp.cache import CachedClient, ResponseCache
from randsae.autointerp.clients import (
    AnswerProbabilities,
    Client,
    Completion,
    GenParams,
    Usage,
    failure_class,
)
from randsae.autointerp.explainers import (
    Explainer,
    ExplanationResult,
    LLMExplainer,
    TokenListExplainer,
)
from randsae.autointerp.factory import choose_client_kind, default_client
from randsae.autointerp.outcomes import CallSummary, TransientLLMFailures
from randsae.autointerp.pricing import PRICES, Price, cost_usd
from randsae.autointerp.retry import RetryPolicy
from randsae.autointerp.scorers import (
    CONTROL,
    OWN,
    SCORER_CLASSES,
    DetectionScorer,
    ExampleScore,
    FuzzingScorer,
    LatentScore,
    LexicalScorer,
    Scorer,
    control_assignment,
    make_scorer,
    score_latents,
    scorer_class,
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
    "SCORER_CLASSES",
    "AnswerProbabilities",
    "CachedClient",
    "CallSummary",
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
    "LexicalScorer",
    "Price",
    "Prompt",
    "ResponseCache",
    "RetryPolicy",
    "ScoreSummary",
    "Scorer",
    "TokenListExplainer",
    "TransientLLMFailures",
    "Usage",
    "auroc",
    "binary_metrics",
    "bootstrap_auroc_ci",
    "choose_client_kind",
    "control_assignment",
    "cost_usd",
    "default_client",
    "failure_class",
    "make_scorer",
    "score_latents",
    "scorer_class",
    "summarize",
    "summarize_scores",
]
