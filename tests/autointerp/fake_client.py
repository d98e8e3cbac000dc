"""An in-process Client for tests: deterministic answers, counted calls, optional faults."""

from __future__ import annotations

from collections.abc import Sequence

from stub_anthropic import EXAMPLE_RE

from randsae.autointerp.clients import (
    DEFAULT_PARAMS,
    AnswerProbabilities,
    Completion,
    GenParams,
    ProbabilityMode,
    ResultCallback,
    Usage,
)
from randsae.autointerp.types import Prompt


class Interrupted(Exception):
    pass


class FakeClient:
    """Judges 'apple' examples as positive; explains everything as 'the word apple'.

    ``fail_every``: every n-th prompt fails with a transient error. ``stop_after``: raise
    :class:`Interrupted` after that many results (a killed run)."""

    name = "fake"
    model = "fake-1"
    supports_prefill = False

    def __init__(self, mode: ProbabilityMode = "stated", fail_every: int = 0, stop_after: int | None = None,
                 explanation: str = "Explanation: the word apple") -> None:
        self.probability_mode = mode
        self.calls = 0
        self.fail_every = fail_every
        self.stop_after = stop_after
        self.explanation = explanation

    def _tick(self) -> bool:
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise Interrupted
        self.calls += 1
        return bool(self.fail_every) and self.calls % self.fail_every == 0

    def complete(self, prompt: Prompt, params: GenParams = DEFAULT_PARAMS) -> Completion:
        return self.complete_many([prompt], params)[0]

    def complete_many(self, prompts: Sequence[Prompt], params: GenParams = DEFAULT_PARAMS,
                      on_result: ResultCallback | None = None) -> list[Completion]:
        out = []
        for i, _ in enumerate(prompts):
            fail = self._tick()
            c = (Completion.failure("api", "HTTP 500", client=self.name, model=self.model) if fail
                 else Completion(self.explanation, usage=Usage(10, 5), cost_usd=0.001, client=self.name,
                                 model=self.model))
            out.append(c)
            if on_result:
                on_result(i, c)
        return out

    def answer_probabilities(self, prompts: Sequence[Prompt], choices: Sequence[str] = ("0", "1"),
                             on_result: ResultCallback | None = None) -> list[AnswerProbabilities]:
        out = []
        for i, p in enumerate(prompts):
            fail = self._tick()
            meta = {"usage": Usage(20, 3), "cost_usd": 0.002, "client": self.name, "model": self.model}
            if fail:
                r = AnswerProbabilities((None,) * p.n_items, Completion.failure("api", "HTTP 529", client=self.name,
                                                                                model=self.model))
            else:
                texts = [t for _, t in EXAMPLE_RE.findall(p.user)]
                pos = "apple" in p.context
                probs = tuple((0.1, 0.9) if ("apple" in t) == pos else (0.8, 0.2) for t in texts)
                r = AnswerProbabilities(probs, Completion("", **meta))
            out.append(r)
            if on_result:
                on_result(i, r)
        return out
