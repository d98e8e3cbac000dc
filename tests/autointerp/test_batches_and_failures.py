"""The Anthropic path as the real API behaves: batches never billed twice, replies cut at
max_tokens, explicit thinking, prompt-cache accounting and prices, against the stub server."""

from __future__ import annotations

import json
import logging
import typing

import anthropic
import pytest
from ai_helpers import SECRET, make_bundle
from stub_anthropic import Fault, StubAnthropic

from randsae.autointerp.anthropic_client import DEFAULT_MODEL, AnthropicClient, judge_max_tokens
from randsae.autointerp.cache import CachedClient, ResponseCache
from randsae.autointerp.clients import failure_class
from randsae.autointerp.explainers import LLMExplainer
from randsae.autointerp.outcomes import summarize_scores, warnings_for
from randsae.autointerp.pricing import PRICES, UNPRICED_MODELS, base_model, price_for
from randsae.autointerp.retry import RetryPolicy
from randsae.autointerp.scorers import DetectionScorer
from randsae.autointerp.types import Prompt

pytestmark = pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")


class Killed(Exception):
    pass


def prompts(n: int, tag: str = "") -> list[Prompt]:
    return [Prompt(system="sys", user=f"What does this feature respond to? {tag}{i}") for i in range(n)]


def batch_client(stub: StubAnthropic, retry: RetryPolicy, **kw) -> AnthropicClient:
    kw.setdefault("timeout", 2.0)
    return AnthropicClient(base_url=stub.base_url, retry=retry, poll_interval=0.001, mode="batch", **kw)


# ------------------------------------------------------------------ a request is never billed twice


@pytest.mark.parametrize("lost", [Fault("lost", 500), Fault("lost", seconds=0.6)], ids=["http500", "timeout"])
def test_lost_create_response_is_found_not_resubmitted(stub, api_key, fast_retry, tmp_path, lost) -> None:
    stub.faults["batch_create"].append(lost)
    journal = tmp_path / "journal"
    out = batch_client(stub, fast_retry, journal_dir=journal, timeout=0.3).complete_many(prompts(3))
    assert all(c.ok and "apple" in c.text for c in out)
    assert stub.counts["batch_create"] == 1 and stub.created_batches == 1  # one batch billed
    assert stub.counts["batch_list"] >= 1
    assert not list(journal.glob("*.json"))  # results handed on: the journal entry is gone


def test_journal_is_written_before_create_and_a_killed_run_finds_its_batch(stub, api_key, fast_retry,
                                                                          tmp_path) -> None:
    def die(_: float) -> None:  # killed during the backoff after a create whose response was lost
        raise Killed

    journal = tmp_path / "journal"
    stub.faults["batch_create"].append(Fault("lost", 500))
    with pytest.raises(Killed):
        batch_client(stub, fast_retry, journal_dir=journal, sleep=die).complete_many(prompts(3))
    (entry,) = [json.loads(p.read_text()) for p in journal.glob("*.json")]
    assert entry["batch_id"] is None and entry["intent_at"] and entry["n_requests"] == 3
    assert stub.created_batches == 1
    out = batch_client(stub, fast_retry, journal_dir=journal).complete_many(prompts(3))
    assert all(c.ok for c in out)
    assert stub.counts["batch_create"] == 1 and stub.created_batches == 1
    assert not list(journal.glob("*.json"))
    assert not any(SECRET in p.read_text() for p in tmp_path.rglob("*") if p.is_file())


def test_unreadable_batch_list_never_resubmits(stub, api_key, fast_retry, tmp_path) -> None:
    def outage_starts(_: float) -> None:
        stub.outage = Fault("status", 503)

    journal = tmp_path / "journal"
    stub.faults["batch_create"].append(Fault("lost", 500))
    out = batch_client(stub, fast_retry, journal_dir=journal, sleep=outage_starts).complete_many(prompts(2))
    assert all(not c.ok and failure_class(c.error_kind) == "transient" and "not resubmitting" in c.reason
               for c in out)
    assert stub.created_batches == 1 and len(list(journal.glob("*.json"))) == 1
    stub.outage = None
    again = batch_client(stub, fast_retry, journal_dir=journal).complete_many(prompts(2))
    assert all(c.ok for c in again) and stub.counts["batch_create"] == 1 and stub.created_batches == 1
    assert not list(journal.glob("*.json"))


def test_a_foreign_batch_of_the_same_size_is_not_adopted(stub, api_key, fast_retry, tmp_path) -> None:
    other = batch_client(stub, fast_retry)
    sleeps: list[float] = []

    def someone_else_submits(wait: float) -> None:  # a concurrent job's batch, newer than ours, same size
        sleeps.append(wait)
        if len(sleeps) == 1:
            other.complete_many(prompts(2, tag="other "))

    stub.faults["batch_create"].append(Fault("lost", 500))
    mine = batch_client(stub, fast_retry, journal_dir=tmp_path / "j", sleep=someone_else_submits)
    out = mine.complete_many(prompts(2))
    assert [c.text.endswith("apple") for c in out] == [True, True]
    assert stub.created_batches == 2 and stub.counts["batch_create"] == 2  # ours (lost) + theirs, no third
    ours = [b for b in stub.batches.values() if "other" not in json.dumps(b["requests"])]
    assert len(ours) == 1


def test_killed_while_results_are_stored_resumes_without_paying_again(stub, api_key, fast_retry, tmp_path) -> None:
    cache = ResponseCache(tmp_path / "cache")
    journal = tmp_path / "cache" / "batch-journal"
    stored: list[int] = []

    def killed_after_two(i, _result) -> None:
        stored.append(i)
        if len(stored) == 2:
            raise Killed

    with pytest.raises(Killed):
        CachedClient(batch_client(stub, fast_retry, journal_dir=journal), cache).complete_many(
            prompts(4), on_result=killed_after_two)
    assert len(cache) == 2 and list(journal.glob("*.json"))  # kept: not every result reached the cache
    # the rerun wants the two uncached requests only: a different set, found through the journal
    out = CachedClient(batch_client(stub, fast_retry, journal_dir=journal), cache).complete_many(prompts(4))
    assert all(c.ok for c in out) and sum(c.cached for c in out) == 2
    assert stub.created_batches == 1 and len(cache) == 4
    assert not list(journal.glob("*.json"))


# ------------------------------------------------------------------ failure classes


def test_failure_classes() -> None:
    assert [failure_class(k) for k in ("", "api", "rejected", "refusal", "parse", "truncated", "new-kind")] == [
        "ok", "transient", "answer", "answer", "answer", "truncated", "transient"]


def test_http_400_is_an_answer_not_cached(stub, api_key, fast_retry, tmp_path) -> None:
    stub.faults["messages"].append(Fault("status", 400, "invalid_request_error"))
    cache = ResponseCache(tmp_path)
    c = CachedClient(AnthropicClient(base_url=stub.base_url, retry=fast_retry), cache).complete(prompts(1)[0])
    assert not c.ok and c.error_kind == "rejected" and failure_class(c.error_kind) == "answer"
    assert len(cache) == 0


def test_batch_items_overloaded_are_transient_invalid_are_answers(stub, api_key, fast_retry) -> None:
    stub.batch_item_fault = lambda i, cid: {0: "overloaded", 1: "errored"}.get(i)
    out = batch_client(stub, fast_retry).complete_many(prompts(3))
    kinds = sorted(failure_class(c.error_kind) for c in out)
    assert kinds == ["answer", "ok", "transient"]


# ------------------------------------------------------------------ truncation and thinking


def test_replies_cut_at_max_tokens_are_truncated_counted_and_not_cached(stub, api_key, fast_retry,
                                                                       tmp_path) -> None:
    stub.faults["messages"].append(Fault("max_tokens", status=150))
    cache = ResponseCache(tmp_path / "cache")
    judge = CachedClient(AnthropicClient(base_url=stub.base_url, retry=fast_retry, concurrency=1), cache)
    (r,) = LLMExplainer(judge).explain([make_bundle(0)])
    assert not r.ok and r.error_kind == "truncated" and "max_tokens" in r.reason and "150 of them thinking" in r.reason
    assert len(cache) == 0  # not stored as a parse failure (or at all)
    stub.truncate_all = True
    scores = DetectionScorer(judge).score([make_bundle(1)], {1: "apples"})
    summary = summarize_scores(scores)
    assert summary.truncated == summary.calls == scores[0].n_prompts > 0 and summary.transient == 0
    assert any("cut at max_tokens" in w for w in warnings_for("score", summary))
    assert len(cache) == 0
    stub.truncate_all = False
    (again,) = LLMExplainer(judge).explain([make_bundle(0)])
    assert again.ok and not again.cached


def test_thinking_and_max_tokens_are_explicit(stub, api_key, fast_retry) -> None:
    p = Prompt(system="sys", context="<explanation>apple</explanation>", user="<examples>\n</examples>", n_items=5)
    judge = AnthropicClient(base_url=stub.base_url, retry=fast_retry, concurrency=1)
    judge.answer_probabilities([p])
    judge.complete(prompts(1)[0])
    assert stub.counts["models"] == 1  # looked up once per client
    judged, explained = stub.message_bodies
    assert judged["thinking"] == {"type": "disabled"} and judged["max_tokens"] == judge_max_tokens(5)
    assert explained["thinking"] == {"type": "disabled"} and explained["max_tokens"] == 256

    stub.thinking_types = {"disabled": False, "between_tools": True, "adaptive": True, "enabled": False}
    AnthropicClient(base_url=stub.base_url, retry=fast_retry).complete(prompts(1)[0])
    assert stub.message_bodies[-1]["thinking"] == {"type": "between_tools"}

    stub.thinking_types = {"disabled": False, "between_tools": False, "adaptive": True, "enabled": False}
    AnthropicClient(base_url=stub.base_url, retry=fast_retry, thinking_headroom=1000).complete(prompts(1)[0])
    body = stub.message_bodies[-1]
    assert body["thinking"] == {"type": "adaptive"} and body["max_tokens"] == 256 + 1000


def test_a_failed_model_lookup_fails_the_calls_transiently(stub, api_key, fast_retry) -> None:
    stub.faults["models"].extend([Fault("status", 529, "overloaded_error")] * 4)
    out = AnthropicClient(base_url=stub.base_url, retry=fast_retry).complete_many(prompts(2))
    assert all(not c.ok and failure_class(c.error_kind) == "transient" and "model lookup" in c.reason for c in out)
    assert stub.counts["messages"] == 0


# ------------------------------------------------------------------ prompt cache and prices


def test_prompt_cache_hit_rate_and_never_hits_warning(api_key, fast_retry) -> None:
    bundles = [make_bundle(i) for i in range(2)]
    explanations = {0: "apples", 1: "apples"}
    for min_tokens, hits in ((1024, True), (10**9, False)):
        s = StubAnthropic(cache_min_tokens=min_tokens)
        try:
            judge = AnthropicClient(base_url=s.base_url, retry=fast_retry, concurrency=1)
            summary = summarize_scores(DetectionScorer(judge).score(bundles, explanations))
        finally:
            s.close()
        rate = summary.prompt_cache_hit_rate
        assert rate is not None and (rate > 0.5) == hits
        never = [w for w in warnings_for("score", summary) if "prompt caching never hit" in w]
        assert bool(never) == (not hits)
        assert summary.to_info()["prompt_cache_hit_rate"] == round(rate, 4)


def test_price_table_is_in_step_with_the_sdk() -> None:
    (literal, _str) = typing.get_args(anthropic.types.ModelParam)
    known = {base_model(m) for m in typing.get_args(literal)}
    missing = sorted(m for m in known if price_for(m) is None and m not in UNPRICED_MODELS)
    assert not missing, f"models the SDK knows without a price or an UNPRICED_MODELS entry: {missing}"
    assert not (set(PRICES) & UNPRICED_MODELS)
    assert DEFAULT_MODEL in PRICES


def test_an_unpriced_model_is_a_warning(stub, api_key, fast_retry, caplog) -> None:
    caplog.set_level(logging.WARNING)
    judge = AnthropicClient("claude-fable-5-2", base_url=stub.base_url, retry=fast_retry)
    assert judge.unpriced_warning and "claude-fable-5-2" in caplog.text and "no price" in caplog.text
    c = judge.complete(prompts(1)[0])
    assert c.ok and c.cost_usd is None
