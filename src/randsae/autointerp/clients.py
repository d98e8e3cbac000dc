"""The client interface shared by every explainer/judge backend, and its shared types.

Why a protocol: the explainer and scorers are written once against :class:`Client`; the
Anthropic API (:mod:`.anthropic_client`), a local HuggingFace model (:mod:`.local_client`) and
the response cache (:class:`randsae.autointerp.cache.CachedClient`, a wrapper with the same
interface) are interchangeable. Every result carries the client name and model that produced
it, so a DuckDB row always says which judge it came from. The factory that picks a backend
from a config lives in :mod:`.factory`: it imports the backends, which import this module, so
keeping it here would tie the protocol and every backend into one import cycle.

Two ways to get answer probabilities, named by ``probability_mode``:

- ``"logprobs"`` (local models): the next-token distribution over the answer tokens, read after
  each of the prompt's ``cues`` without generating;
- ``"stated"`` (Claude, which returns no logprobs): the model states a probability per item in
  JSON, which is parsed (:func:`randsae.autointerp.parsing.parse_stated_probabilities`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from randsae.autointerp.types import Prompt

ProbabilityMode = Literal["logprobs", "stated"]

#: What a failed call means, decided here and nowhere else (:func:`failure_class`):
#:
#: - ``transient``: a retry could fix it (HTTP 429/5xx/529, timeouts, connection errors,
#:   malformed bodies, batch items errored by the server, expired or cancelled, a failed local
#:   forward). Never cached and never published: the stage fails after the client's retries,
#:   and the rerun asks again for exactly these calls.
#: - ``answer``: the model (or the API, about this very request) answered, and asking again
#:   would most likely give the same: a refusal, an empty or unparseable reply, HTTP 400. Kept
#:   in the artifact and counted. Refusals and unusable replies were paid for and are cached;
#:   a rejected request (``rejected``, HTTP 400/413/422) cost nothing and is not.
#: - ``truncated``: the reply was cut at ``max_tokens`` (or the context window), often because
#:   thinking took the budget. Kept, counted and reported as such, never cached (a rerun with
#:   a larger budget asks again).
FailureClass = Literal["ok", "transient", "answer", "truncated"]

TRANSIENT_FAILURES = frozenset({"api"})
#: Failures kept in the artifact; ``no_input`` is a latent with nothing to send (no examples).
ANSWER_FAILURES = frozenset({"refusal", "empty", "parse", "rejected", "no_input"})
TRUNCATED_FAILURES = frozenset({"truncated"})
#: Failures stored in the response cache (paid-for answers that would likely repeat).
CACHED_FAILURES = frozenset({"refusal", "empty", "parse"})


def failure_class(error_kind: str) -> FailureClass:
    """The class of a failure kind (``""`` is success). An unknown kind is transient: a failure
    nobody classified must never be published as a result."""
    if not error_kind:
        return "ok"
    if error_kind in ANSWER_FAILURES:
        return "answer"
    if error_kind in TRUNCATED_FAILURES:
        return "truncated"
    return "transient"


@dataclass(frozen=True)
class Usage:
    """Token counts of one call. ``input_tokens`` excludes cache reads and writes (as the
    Anthropic API reports it)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
        )

    @property
    def total_input_tokens(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens


@dataclass(frozen=True)
class GenParams:
    """Generation parameters; part of the cache key. There is no temperature: local models
    decode greedily, and the installed Anthropic SDK (API version 2026-10-21) no longer takes
    sampling parameters, so answers are reproduced through the response cache instead."""

    max_tokens: int = 256
    stop: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "stop": list(self.stop)}


#: The default generation parameters (a module constant so signatures can share it).
DEFAULT_PARAMS = GenParams()


@dataclass(frozen=True)
class Completion:
    """One model response, or a recorded failure (``ok=False``, ``error_kind`` and ``reason``).

    ``error_kind``: "" on success; "api" (transport/HTTP/batch-item error after retries),
    "rejected" (HTTP 400: the API refused this request), "refusal", "empty", "parse" (a
    response arrived but is unusable), "truncated" (cut at ``max_tokens``); its class is
    :func:`failure_class`. ``reason`` never contains secrets. ``cached``: served from the response cache (cost of this call: 0).
    """

    text: str
    ok: bool = True
    error_kind: str = ""
    reason: str = ""
    stop_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = 0.0
    model: str = ""
    client: str = ""
    batch: bool = False
    attempts: int = 1
    cached: bool = False

    @property
    def failure_class(self) -> FailureClass:
        return failure_class(self.error_kind)

    @property
    def cacheable(self) -> bool:
        """Successes and paid-for answers that would repeat; never a transient, truncated or
        rejected call (see :data:`FailureClass`)."""
        return not self.error_kind or self.error_kind in CACHED_FAILURES

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["usage"] = asdict(self.usage)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Completion:
        d = dict(d)
        d["usage"] = Usage(**d.get("usage", {}))
        return cls(**d)

    @classmethod
    def failure(cls, kind: str, reason: str, *, client: str, model: str, **kw: Any) -> Completion:
        return cls(text="", ok=False, error_kind=kind, reason=reason, client=client, model=model, **kw)


@dataclass(frozen=True)
class AnswerProbabilities:
    """Per item of one prompt: a probability distribution over the choices (aligned with the
    ``choices`` argument), or ``None`` where no answer could be obtained for that item.

    ``completion`` carries the call's metadata (client, model, usage, cost, failure) and, for
    stated probabilities, the raw text the numbers were parsed from.
    """

    probs: tuple[tuple[float, ...] | None, ...]
    completion: Completion

    @property
    def ok(self) -> bool:
        return self.completion.ok and all(p is not None for p in self.probs)

    def p(self, item: int, choice: int = -1) -> float | None:
        """Probability of ``choices[choice]`` (default: the last, i.e. "1") for one item."""
        dist = self.probs[item]
        return None if dist is None else dist[choice]

    def to_dict(self) -> dict[str, Any]:
        return {
            "probs": [None if p is None else list(p) for p in self.probs],
            "completion": self.completion.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AnswerProbabilities:
        return cls(
            probs=tuple(None if p is None else tuple(float(x) for x in p) for p in d["probs"]),
            completion=Completion.from_dict(d["completion"]),
        )


#: Called with (index into the request list, result) as soon as each result is known, so a
#: cache can persist finished calls before the rest are done (resume after interruption).
ResultCallback = Callable[[int, Any], None]


@runtime_checkable
class Client(Protocol):
    """A text model usable as explainer and judge."""

    name: str
    model: str
    probability_mode: ProbabilityMode
    supports_prefill: bool

    def complete(self, prompt: Prompt, params: GenParams = ...) -> Completion:
        """One completion; failures are returned (``ok=False``), never raised."""
        ...

    def complete_many(
        self,
        prompts: Sequence[Prompt],
        params: GenParams = ...,
        on_result: ResultCallback | None = None,
    ) -> list[Completion]:
        """Completions for many prompts (batched where the backend can), in input order."""
        ...

    def answer_probabilities(
        self,
        prompts: Sequence[Prompt],
        choices: Sequence[str] = ("0", "1"),
        on_result: ResultCallback | None = None,
    ) -> list[AnswerProbabilities]:
        """For each prompt, a distribution over ``choices`` per item (see :class:`Prompt`)."""
        ...


def client_identity(client: Client) -> dict[str, str]:
    """What a result records about its judge."""
    return {"client": client.name, "model": client.model}
