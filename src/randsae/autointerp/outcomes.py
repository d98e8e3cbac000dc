"""What the LLM calls of one explain or score job came to, and whether it may be published.

Why one place: the issue this answers ("a transient failure is never a finished artifact")
needs a single rule, applied the same way by both stages. Every call ends in one of the
classes of :func:`randsae.autointerp.clients.failure_class`; a job whose calls still include a
transient failure after the client's retries raises :class:`TransientLLMFailures` instead of
writing its artifact, so nothing is published, the successes already sit in the response
cache, and the rerun (Snakemake reruns a failed job) asks again for the failed calls only.

The same summary carries the prompt-cache hit rate and the warnings a user should see: replies
cut at ``max_tokens`` and a prompt-cache prefix that was marked but never read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from randsae.autointerp.clients import Usage, failure_class

if TYPE_CHECKING:  # pragma: no cover - typing only
    from randsae.autointerp.explainers import ExplanationResult
    from randsae.autointerp.scorers import LatentScore


class CallRecord(NamedTuple):
    """One LLM call as the stages account for it."""

    error_kind: str
    reason: str
    cached: bool


class CallSummary(NamedTuple):
    """Counts over one job's calls. ``failed = transient + answer + truncated``."""

    calls: int
    cached: int
    failed: int
    transient: int
    answer: int
    truncated: int
    last_transient: str
    last_truncated: str
    input_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int

    @property
    def prompt_cache_hit_rate(self) -> float | None:
        """Share of input tokens read from the provider's prompt cache (None without input)."""
        total = self.input_tokens + self.cache_read_tokens + self.cache_write_tokens
        return None if total == 0 else self.cache_read_tokens / total

    def to_info(self) -> dict[str, object]:
        """The job's meta.json ``info`` entry (the run's summary of its LLM calls)."""
        rate = self.prompt_cache_hit_rate
        return {"llm_calls": self.calls, "llm_cached_calls": self.cached, "llm_failed_calls": self.failed,
                "llm_failed_transient": self.transient, "llm_failed_answer": self.answer,
                "llm_truncated": self.truncated,
                "prompt_cache_hit_rate": None if rate is None else round(rate, 4)}


class TransientLLMFailures(RuntimeError):
    """Some calls failed in a way a retry could fix: the artifact must not be published."""


def summarize_calls(records: Iterable[CallRecord], usage: Usage) -> CallSummary:
    """Counts by failure class; ``usage`` is the calls' total token usage (as made: a cache hit
    keeps the usage of the call that produced it)."""
    calls = cached = transient = answer = truncated = 0
    last_transient = last_truncated = ""
    for r in records:
        calls += 1
        cached += r.cached
        cls = failure_class(r.error_kind)
        if cls == "transient":
            transient += 1
            last_transient = r.reason or r.error_kind
        elif cls == "answer":
            answer += 1
        elif cls == "truncated":
            truncated += 1
            last_truncated = r.reason
    return CallSummary(calls, cached, transient + answer + truncated, transient, answer, truncated,
                       last_transient, last_truncated, usage.input_tokens, usage.cache_read_tokens,
                       usage.cache_write_tokens)


def summarize_explanations(results: Sequence[ExplanationResult]) -> CallSummary:
    """One call per LLM explanation (the token-list baseline and latents without examples make
    none)."""
    made = [r for r in results if r.client != "none" and r.error_kind != "no_input"]
    usage = sum((r.usage for r in made), Usage())
    return summarize_calls((CallRecord(r.error_kind, r.reason, r.cached) for r in made), usage)


def summarize_scores(scores: Sequence[LatentScore]) -> CallSummary:
    """One call per scoring prompt (a latent's failed prompts carry their kind and reason)."""
    records: list[CallRecord] = []
    for s in scores:
        records += [CallRecord(kind, reason, False) for kind, reason in s.failures]
        n_ok = s.n_prompts - len(s.failures)
        n_cached = min(s.n_cached_prompts, n_ok)  # only successes and answers are ever cached
        records += [CallRecord("", "", i < n_cached) for i in range(n_ok)]
    return summarize_calls(records, sum((s.usage for s in scores), Usage()))


def check_publishable(stage: str, summary: CallSummary) -> None:
    """Raise :class:`TransientLLMFailures` when any call failed transiently (see the module
    docstring). The message names the counts and the last error."""
    if summary.transient:
        raise TransientLLMFailures(
            f"{stage}: {summary.transient} of {summary.calls} LLM calls failed after the client's retries "
            f"(last error: {summary.last_transient}); nothing was published. Successful calls are in the "
            "response cache: rerun to retry only the failed ones once the API is reachable again")


def warnings_for(stage: str, summary: CallSummary, *, prompt_caching: bool = True) -> list[str]:
    """What the user should hear about a publishable job: truncated replies, and a marked
    prompt-cache prefix that was never read back (e.g. shorter than the model's minimum
    cacheable length, or calls too far apart for the cache's lifetime)."""
    out = []
    if summary.truncated:
        out.append(f"{stage}: {summary.truncated} of {summary.calls} replies were cut at max_tokens "
                   f"(last: {summary.last_truncated}); they are counted as failed, not cached")
    if prompt_caching and summary.calls >= 2 and summary.input_tokens and summary.cache_read_tokens == 0:
        why = ("the prefix was written but never read back" if summary.cache_write_tokens else
               "nothing was cached: the marked prefix is probably below the model's minimum cacheable length")
        out.append(f"{stage}: prompt caching never hit over {summary.calls} calls ({why})")
    return out
