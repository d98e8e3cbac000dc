"""Detection and fuzzing scorers, and the random-explanation control.

Detection: "does this window contain what the explanation describes?" Positives are the
latent's activating test examples (over all quantiles), negatives random non-activating
windows. One probability per example.

Fuzzing (delphi's "default" mode, which we implement): "are the marked tokens correctly
marked?" In an activating window the marked tokens are exactly those where the latent is
active (activation > 0); in a non-activating window, as many random tokens are marked as in a
randomly chosen activating test example of the same latent (at least one), so a window's
number of marks does not give the answer away. Positives = activating windows, negatives =
non-activating windows with random marks. (delphi's other mode, "active", instead mis-marks
tokens inside activating windows; we do not use it.)

Both: examples shuffled with a seeded RNG and split into prompts of ``examples_per_prompt``
(default 5); the shuffle and the random marks depend on (seed, scorer, latent) only, so the
own and control explanations of a latent are judged on identical prompts apart from the
explanation. Per example: P("1"), prediction P > 0.5.

Lexical (no LLM, :mod:`randsae.autointerp.lexical`): each window's probability from how well
its tokens (token-list explanations) or words (free text) match the explanation. Same
examples, labels, rows and control as detection; no prompts, no client, no response cache
(it is deterministic and costs microseconds, so a rerun recomputes the identical rows).

Control: each latent is also scored with another latent's explanation (a seeded derangement).
Its AUROC measures how much the judge gets right without a relevant explanation, which
calibrates the own-explanation AUROC.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol

from randsae.autointerp.clients import AnswerProbabilities, Client, Usage
from randsae.autointerp.lexical import lexical_probabilities
from randsae.autointerp.prompts import detection_prompt, fuzzing_prompt
from randsae.autointerp.stats import ScoreSummary, summarize
from randsae.autointerp.types import Example, LatentExamples, Prompt
from randsae.enums import DETECTION, FUZZING, LEXICAL, SCORERS

OWN, CONTROL = "own", "control"


@dataclass(frozen=True)
class ExampleScore:
    """One judged example (a row of the DuckDB ``scores`` table)."""

    latent: int
    scorer: str
    explanation_source: str
    explanation_latent: int
    index: int
    quantile: int
    label: bool
    probability: float | None
    prediction: bool | None
    prompt: int
    client: str
    model: str
    ok: bool
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LatentScore:
    """All judged examples of one latent under one scorer and one explanation."""

    latent: int
    scorer: str
    explanation_source: str
    explanation_latent: int
    explanation: str
    client: str
    model: str
    examples: tuple[ExampleScore, ...]
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = 0.0
    n_prompts: int = 0
    n_failed_prompts: int = 0
    ok: bool = True
    reason: str = ""
    #: (error_kind, reason) of each failed prompt, for the stage's failure accounting.
    failures: tuple[tuple[str, str], ...] = ()
    #: prompts answered from randsae's response cache (no API call this run)
    n_cached_prompts: int = 0

    @property
    def labels(self) -> list[bool]:
        return [e.label for e in self.examples]

    @property
    def probabilities(self) -> list[float | None]:
        return [e.probability for e in self.examples]

    def rows(self) -> list[dict[str, Any]]:
        return [e.to_dict() for e in self.examples]


@dataclass(frozen=True)
class _Item:
    example: Example
    label: bool
    index: int
    highlight: tuple[bool, ...] | None = None


class Scorer(Protocol):
    name: str

    def score(
        self,
        bundles: Sequence[LatentExamples],
        explanations: Mapping[int, str],
        *,
        source: str = OWN,
        explanation_latents: Mapping[int, int] | None = None,
    ) -> list[LatentScore]: ...


class _LLMScorer:
    """Shared logic; subclasses define the items and the prompt."""

    name = "base"
    #: Whether the scorer asks an LLM (the score stage builds a client only for those that do).
    needs_client: ClassVar[bool] = True

    def __init__(
        self, client: Client, *, examples_per_prompt: int = 5, seed: int = 0, n_demos: int | None = None
    ) -> None:
        if examples_per_prompt < 1:
            raise ValueError("examples_per_prompt must be >= 1")
        self.client = client
        self.examples_per_prompt = examples_per_prompt
        self.seed = seed
        #: Worked examples in the instructions (None: the default of the client's probability mode).
        self.n_demos = n_demos

    def _rng(self, latent: int) -> random.Random:
        return random.Random(f"{self.seed}:{self.name}:{latent}")

    def items(self, bundle: LatentExamples) -> list[_Item]:
        raise NotImplementedError

    def prompt(self, explanation: str, items: Sequence[_Item]) -> Prompt:
        raise NotImplementedError

    def groups(self, bundle: LatentExamples) -> list[list[_Item]]:
        """The latent's items, shuffled (seeded) and split into prompts."""
        items = self.items(bundle)
        self._rng(bundle.latent).shuffle(items)
        k = self.examples_per_prompt
        return [items[i : i + k] for i in range(0, len(items), k)]

    def score(
        self,
        bundles: Sequence[LatentExamples],
        explanations: Mapping[int, str],
        *,
        source: str = OWN,
        explanation_latents: Mapping[int, int] | None = None,
    ) -> list[LatentScore]:
        """Judge every latent that has an explanation; all prompts go to the client in one call
        so it can batch across latents. ``explanation_latents`` says whose explanation each
        latent gets (default: its own)."""
        plan: list[tuple[LatentExamples, str, int, list[list[_Item]]]] = []
        prompts: list[Prompt] = []
        for b in bundles:
            text = explanations.get(b.latent, "")
            whose = (explanation_latents or {}).get(b.latent, b.latent)
            groups = self.groups(b) if text else []
            plan.append((b, text, whose, groups))
            prompts.extend(self.prompt(text, g) for g in groups)
        try:
            answers = self.client.answer_probabilities(prompts, ("0", "1"))
        except Exception as err:  # noqa: BLE001 - a broken client yields failed rows, not a crash
            from randsae.autointerp.clients import Completion

            fail = Completion.failure("api", f"client error: {type(err).__name__}",
                                      client=self.client.name, model=self.client.model)
            answers = [AnswerProbabilities((None,) * p.n_items, fail) for p in prompts]
        out: list[LatentScore] = []
        k = 0
        for b, text, whose, groups in plan:
            mine = answers[k : k + len(groups)]
            k += len(groups)
            out.append(self._latent_score(b, text, whose, source, groups, mine))
        return out

    def _latent_score(
        self,
        bundle: LatentExamples,
        explanation: str,
        whose: int,
        source: str,
        groups: Sequence[Sequence[_Item]],
        answers: Sequence[AnswerProbabilities],
    ) -> LatentScore:
        ident: dict[str, Any] = {"client": self.client.name, "model": self.client.model}
        base: dict[str, Any] = {"latent": bundle.latent, "scorer": self.name, "explanation_source": source,
                "explanation_latent": whose, "explanation": explanation}
        if not explanation:
            return LatentScore(**base, **ident, examples=(), ok=False, reason="no explanation")
        rows: list[ExampleScore] = []
        usage = Usage()
        cost: float | None = 0.0
        failures: list[tuple[str, str]] = []
        cached = 0
        for g, (group, ans) in enumerate(zip(groups, answers, strict=True)):
            c = ans.completion
            usage = usage + c.usage
            cost = None if cost is None or c.cost_usd is None else cost + c.cost_usd
            cached += c.cached
            if not c.ok:
                failures.append((c.error_kind or "api", c.reason))
            ident = {"client": c.client or self.client.name, "model": c.model or self.client.model}
            for j, item in enumerate(group):
                p = ans.p(j) if j < len(ans.probs) else None
                reason = "" if p is not None else (f"{c.error_kind}: {c.reason}" if not c.ok else "item unanswered")
                rows.append(ExampleScore(
                    latent=bundle.latent, scorer=self.name, explanation_source=source, explanation_latent=whose,
                    index=item.index, quantile=item.example.quantile, label=item.label, probability=p,
                    prediction=None if p is None else p > 0.5, prompt=g, ok=p is not None, reason=reason, **ident,
                ))
        rows.sort(key=lambda r: r.index)
        return LatentScore(**base, **ident, examples=tuple(rows), usage=usage, cost_usd=cost,
                           n_prompts=len(groups), n_failed_prompts=len(failures), failures=tuple(failures),
                           n_cached_prompts=cached)


def _indexed(bundle: LatentExamples) -> list[tuple[int, Example, bool]]:
    pos = [(i, ex, True) for i, ex in enumerate(bundle.test)]
    neg = [(len(bundle.test) + i, ex, False) for i, ex in enumerate(bundle.non_activating)]
    return pos + neg


class DetectionScorer(_LLMScorer):
    """Whole-window judgement (see the module docstring)."""

    name = DETECTION

    def items(self, bundle: LatentExamples) -> list[_Item]:
        return [_Item(ex, label, i) for i, ex, label in _indexed(bundle)]

    def prompt(self, explanation: str, items: Sequence[_Item]) -> Prompt:
        return detection_prompt(
            explanation, [it.example for it in items], self.client.probability_mode, self.n_demos
        )


class FuzzingScorer(_LLMScorer):
    """Marked-token judgement, delphi "default" mode (see the module docstring)."""

    name = FUZZING

    def items(self, bundle: LatentExamples) -> list[_Item]:
        rng = self._rng(bundle.latent)
        counts = [sum(a > 0 for a in ex.activations) for ex in bundle.test] or [1]
        out = []
        for i, ex, label in _indexed(bundle):
            if label:
                mask = tuple(a > 0 for a in ex.activations)
            else:
                n = len(ex.tokens)
                k = min(n, max(1, rng.choice(counts)))
                marked = set(rng.sample(range(n), k)) if n else set()
                mask = tuple(t in marked for t in range(n))
            out.append(_Item(ex, label, i, mask))
        return out

    def prompt(self, explanation: str, items: Sequence[_Item]) -> Prompt:
        return fuzzing_prompt(
            explanation,
            [it.example for it in items],
            [it.highlight or () for it in items],
            self.client.probability_mode,
            self.n_demos,
        )


class LexicalScorer:
    """Token/word overlap between explanation and window, no LLM (definition:
    :mod:`randsae.autointerp.lexical`). The same examples, labels and row layout as detection
    (test examples first, then non-activating), so its rows sit in the same ``scores`` table
    and go through the same AUROC; rows say ``client="none"``, ``model="lexical"``."""

    name = LEXICAL
    needs_client: ClassVar[bool] = False
    CLIENT, MODEL = "none", "lexical"

    def score(
        self,
        bundles: Sequence[LatentExamples],
        explanations: Mapping[int, str],
        *,
        source: str = OWN,
        explanation_latents: Mapping[int, int] | None = None,
    ) -> list[LatentScore]:
        """As :meth:`_LLMScorer.score`. A token list is weighted by the activation mass on the
        explainer examples of the latent it belongs to, looked up among ``bundles`` (the control
        thus uses the other latent's weights, never the judged latent's)."""
        by_latent = {b.latent: b for b in bundles}
        out = []
        for b in bundles:
            text = explanations.get(b.latent, "")
            whose = (explanation_latents or {}).get(b.latent, b.latent)
            base: dict[str, Any] = {"latent": b.latent, "scorer": self.name, "explanation_source": source,
                                    "explanation_latent": whose, "client": self.CLIENT, "model": self.MODEL}
            if not text:
                out.append(LatentScore(**base, explanation=text, examples=(), ok=False, reason="no explanation"))
                continue
            items = _indexed(b)
            probs = lexical_probabilities(text, [ex for _, ex, _ in items], by_latent.get(whose))
            rows = tuple(
                ExampleScore(**base, index=i, quantile=ex.quantile, label=label, probability=p, prediction=p > 0.5,
                             prompt=-1, ok=True)
                for (i, ex, label), p in zip(items, probs, strict=True)
            )
            out.append(LatentScore(**base, explanation=text, examples=rows))
        return out


#: Scorer name (config ``autointerp.scorers``, the score stage's ``scorer`` parameter) -> class.
#: The names themselves are defined in :mod:`randsae.enums`; this maps each to its code.
SCORER_CLASSES: dict[str, type[_LLMScorer] | type[LexicalScorer]] = {
    cls.name: cls for cls in (DetectionScorer, FuzzingScorer, LexicalScorer)
}
if tuple(SCORER_CLASSES) != SCORERS:  # pragma: no cover - a guard for whoever adds a scorer
    raise RuntimeError(f"scorer classes {tuple(SCORER_CLASSES)} do not match randsae.enums.SCORERS {SCORERS}")


def scorer_class(name: str) -> type[_LLMScorer] | type[LexicalScorer]:
    """The scorer class registered under ``name``."""
    try:
        return SCORER_CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown scorer {name!r}; known: {', '.join(SCORER_CLASSES)}") from None


def make_scorer(name: str, client: Client | None = None, *, examples_per_prompt: int = 5, seed: int = 0) -> Scorer:
    """The scorer registered under ``name``, built: LLM scorers need ``client`` (and take
    ``examples_per_prompt`` and ``seed``); the lexical scorer takes neither."""
    cls = scorer_class(name)
    if not issubclass(cls, _LLMScorer):
        return cls()
    if client is None:
        raise ValueError(f"scorer {name!r} asks an LLM: it needs a client (the lexical scorer needs none)")
    return cls(client, examples_per_prompt=examples_per_prompt, seed=seed)


def control_assignment(latents: Sequence[int], seed: int = 0) -> dict[int, int]:
    """latent -> another latent whose explanation it gets as the control (a seeded
    derangement: a random cyclic order, each latent taking its successor's explanation).
    Empty with fewer than two latents."""
    order = sorted(set(latents))
    if len(order) < 2:
        return {}
    random.Random(f"control:{seed}").shuffle(order)
    return {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}


def score_latents(
    scorer: Scorer,
    bundles: Sequence[LatentExamples],
    explanations: Mapping[int, str],
    *,
    control: bool = True,
    seed: int = 0,
) -> list[LatentScore]:
    """Own-explanation scores and, with ``control``, random-explanation scores.

    ``explanations`` holds only usable explanations; latents without one get a
    ``LatentScore`` with ``ok=False``. Control explanations are drawn among those latents.
    """
    own = scorer.score(bundles, explanations, source=OWN)
    if not control:
        return own
    assign = control_assignment([b.latent for b in bundles if explanations.get(b.latent)], seed)
    ctrl_expl = {lat: explanations[other] for lat, other in assign.items()}
    with_control = [b for b in bundles if b.latent in assign]
    return own + scorer.score(with_control, ctrl_expl, source=CONTROL, explanation_latents=assign)


@dataclass(frozen=True)
class SummaryRow:
    """One latent's (``latent`` set) or one SAE's pooled (``latent`` None) statistics."""

    scorer: str
    explanation_source: str
    latent: int | None
    summary: ScoreSummary

    def to_dict(self) -> dict[str, Any]:
        return {"scorer": self.scorer, "explanation_source": self.explanation_source, "latent": self.latent,
                **self.summary.to_dict()}


def summarize_scores(results: Sequence[LatentScore], *, n_boot: int = 1000, seed: int = 0) -> list[SummaryRow]:
    """Per-latent rows, then one pooled row per (scorer, explanation source)."""
    rows: list[SummaryRow] = []
    pooled: dict[tuple[str, str], list[LatentScore]] = defaultdict(list)
    for r in results:
        if not r.examples:
            continue
        rows.append(SummaryRow(r.scorer, r.explanation_source, r.latent,
                               summarize(r.labels, r.probabilities, n_boot=n_boot, seed=seed)))
        pooled[(r.scorer, r.explanation_source)].append(r)
    for (scorer, source), rs in sorted(pooled.items()):
        labels = [lab for r in rs for lab in r.labels]
        probs = [p for r in rs for p in r.probabilities]
        groups = [r.latent for r in rs for _ in r.examples]
        rows.append(SummaryRow(scorer, source, None,
                               summarize(labels, probs, groups=groups, n_boot=n_boot, seed=seed)))
    return rows
