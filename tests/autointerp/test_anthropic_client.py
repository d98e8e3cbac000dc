"""AnthropicClient against the stub server: faults, batches, caching, cost, secrecy."""

from __future__ import annotations

import json
import logging

import pytest
from ai_helpers import SECRET, make_bundle
from stub_anthropic import Fault, StubAnthropic

from randsae.autointerp.anthropic_client import DEFAULT_MODEL, AnthropicClient, AnthropicConfigError
from randsae.autointerp.cache import CachedClient, ResponseCache
from randsae.autointerp.clients import Completion, Usage
from randsae.autointerp.explainers import LLMExplainer
from randsae.autointerp.pricing import cost_usd, price_for
from randsae.autointerp.retry import RetryPolicy
from randsae.autointerp.scorers import (
    DetectionScorer,
    FuzzingScorer,
    score_latents,
    summarize_scores,
)
from randsae.autointerp.types import Prompt

# The SDK warns that the config's default model is deprecated; that is for users, not tests.
pytestmark = pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")

EXPLAIN = Prompt(system="sys", user="<examples>\n</examples>\n\nWhat does this feature respond to?")


def client(stub: StubAnthropic, retry: RetryPolicy, **kw) -> AnthropicClient:
    kw.setdefault("timeout", 2.0)
    return AnthropicClient(base_url=stub.base_url, retry=retry, poll_interval=0.001, **kw)


FAULTS = [
    Fault("status", 429, "rate_limit_error", {"retry-after": "0"}),
    Fault("status", 500, "api_error"),
    Fault("status", 529, "overloaded_error"),
    Fault("status", 503, "api_error"),
    Fault("malformed"),
    Fault("sleep", seconds=0.6),
]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f"{f.kind}-{f.status}")
def test_transient_fault_then_success(stub, api_key, fast_retry, fault) -> None:
    stub.faults["messages"].append(fault)
    c = client(stub, fast_retry, timeout=0.25).complete(EXPLAIN)
    assert c.ok and c.attempts == 2 and "Explanation: the word apple" in c.text
    assert stub.counts["messages"] == 2


def test_persistent_fault_is_a_recorded_failure(stub, api_key, fast_retry) -> None:
    stub.faults["messages"].extend([Fault("status", 529, "overloaded_error")] * 4)
    c = client(stub, fast_retry).complete(EXPLAIN)
    assert not c.ok and c.error_kind == "api" and c.attempts == 4 and "529" in c.reason
    assert not c.cacheable


def test_client_errors_are_not_retried(stub, api_key, fast_retry) -> None:
    stub.faults["messages"].append(Fault("status", 400, "invalid_request_error"))
    c = client(stub, fast_retry).complete(EXPLAIN)
    assert not c.ok and c.attempts == 1 and stub.counts["messages"] == 1


def test_retry_after_is_honoured(stub, api_key) -> None:
    waits: list[float] = []
    stub.faults["messages"].extend([
        Fault("status", 429, "rate_limit_error", {"retry-after": "3"}),
        Fault("status", 429, "rate_limit_error", {"retry-after-ms": "1500"}),
    ])
    policy = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.01)
    c = AnthropicClient(base_url=stub.base_url, retry=policy, sleep=waits.append).complete(EXPLAIN)
    assert c.ok and c.attempts == 3
    assert waits[0] >= 3.0 and waits[1] >= 1.5


def test_backoff_grows_exponentially_with_jitter() -> None:
    import random

    p = RetryPolicy(base_delay=1.0, max_delay=8.0)
    rng = random.Random(0)
    waits = [p.delay(a, None, rng) for a in range(1, 6)]
    for a, w in enumerate(waits, start=1):
        cap = min(8.0, 2 ** (a - 1))
        assert cap / 2 <= w <= cap


def test_refusals_become_failures(stub, api_key, fast_retry) -> None:
    stub.faults["messages"].extend([Fault("refusal"), Fault("refusal_text")])
    ex = LLMExplainer(client(stub, fast_retry, concurrency=1))
    r1, r2 = ex.explain([make_bundle(1), make_bundle(2)])
    assert not r1.ok and r1.reason.startswith("refusal")
    assert not r2.ok and r2.reason.startswith("refusal")
    stub.faults["messages"].append(Fault("refusal"))
    judged = DetectionScorer(client(stub, fast_retry, concurrency=1)).score([make_bundle(1)], {1: "apples"})[0]
    assert judged.n_failed_prompts == 1
    failed = [e for e in judged.examples if not e.ok]
    assert failed and all("refusal" in e.reason for e in failed)
    assert sum(e.ok for e in judged.examples) == len(judged.examples) - len(failed)


def test_messages_request_shape_and_cost(stub, api_key, fast_retry) -> None:
    c = client(stub, fast_retry)
    p = Prompt(system="S" * 4400, context="<explanation>apple</explanation>", user="<examples>\n</examples>", n_items=1)
    first = c.answer_probabilities([p])[0]
    second = c.answer_probabilities([p])[0]
    body = stub.message_bodies[0]
    assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert body["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in body["messages"][0]["content"][1]
    assert body["output_config"]["format"]["type"] == "json_schema"
    assert "temperature" not in body
    u1, u2 = first.completion.usage, second.completion.usage
    assert u1.cache_write_tokens > 1000 and u1.cache_read_tokens == 0
    assert u2.cache_read_tokens == u1.cache_write_tokens and u2.cache_write_tokens == 0
    assert second.completion.cost_usd == pytest.approx(cost_usd(DEFAULT_MODEL, u2))
    assert second.completion.cost_usd < first.completion.cost_usd


def test_price_table() -> None:
    assert price_for("claude-sonnet-4-5-20250929") == price_for("claude-sonnet-4-5")
    assert price_for("no-such-model") is None
    u = Usage(input_tokens=1_000_000, output_tokens=1_000_000, cache_read_tokens=1_000_000, cache_write_tokens=1_000_000)
    full = cost_usd("claude-sonnet-4-5", u)
    assert full == pytest.approx(3 + 15 + 0.3 + 3.75)
    assert cost_usd("claude-sonnet-4-5", u, batch=True) == pytest.approx(full / 2)
    assert full is not None
    assert cost_usd("mystery", u) is None
    assert cost_usd("claude-sonnet-5-5", u) == pytest.approx(2 + 10 + 0.2 + 2.5)


def test_batch_with_errored_and_expired_items(stub, api_key, fast_retry, tmp_path) -> None:
    stub.batch_item_fault = lambda i, cid: {1: "errored", 2: "expired"}.get(i)
    bundles = [make_bundle(i) for i in range(5)]
    cached = CachedClient(client(stub, fast_retry, mode="batch"), ResponseCache(tmp_path))
    results = LLMExplainer(cached).explain(bundles)
    assert [r.ok for r in results] == [True, False, False, True, True]
    assert "errored" in results[1].reason and "expired" in results[2].reason
    assert results[0].explanation == "the word apple" and results[0].client == "anthropic"
    assert results[0].cost_usd == pytest.approx(cost_usd(DEFAULT_MODEL, results[0].usage, batch=True))
    assert stub.counts["batch_create"] == 1
    # The rerun resubmits only the two failed items; everything else comes from the cache.
    stub.batch_item_fault = lambda i, cid: None
    again = LLMExplainer(cached).explain(bundles)
    assert all(r.ok for r in again) and stub.counts["batch_create"] == 2
    assert len(stub.batches[sorted(stub.batches)[-1]]["requests"]) == 2
    before = stub.total_requests
    assert all(r.ok and r.cached for r in LLMExplainer(cached).explain(bundles))
    assert stub.total_requests == before


class Killed(Exception):
    pass


def test_killed_batch_run_resumes_the_submitted_batch(stub, api_key, fast_retry, tmp_path) -> None:
    def die(_: float) -> None:
        raise Killed

    journal = tmp_path / "journal"
    prompts = [Prompt(system="sys", user=f"What does this feature respond to? {i}") for i in range(3)]
    with pytest.raises(Killed):
        client(stub, fast_retry, mode="batch", journal_dir=journal, sleep=die).complete_many(prompts)
    assert stub.counts["batch_create"] == 1 and list(journal.glob("*.json"))
    out = client(stub, fast_retry, mode="batch", journal_dir=journal).complete_many(prompts)
    assert all(c.ok for c in out) and stub.counts["batch_create"] == 1
    assert not list(journal.glob("*.json"))


def test_batch_submission_failure_is_recorded(stub, api_key, fast_retry) -> None:
    judge = client(stub, fast_retry, mode="batch")
    judge.complete(Prompt(system="sys", user="What does this feature respond to? warm-up"))  # model looked up
    stub.outage = Fault("status", 500)
    out = judge.complete_many([EXPLAIN, EXPLAIN])
    assert all(not c.ok and "submission failed" in c.reason and c.failure_class == "transient" for c in out)
    assert stub.created_batches == 1  # the warm-up's only


def test_full_run_with_faults_cache_and_secrecy(stub, api_key, fast_retry, tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    stub.faults["messages"].extend([Fault("status", 429, "rate_limit_error", {"retry-after": "0"}),
                                    Fault("malformed"), Fault("status", 500)])
    cache = ResponseCache(tmp_path / "cache")
    judge = CachedClient(client(stub, fast_retry), cache)
    bundles = [make_bundle(i, n_test=10, n_non=5) for i in range(3)]

    def run() -> tuple[list, list]:
        expl = LLMExplainer(judge).explain(bundles)
        explanations = {r.latent: r.explanation for r in expl if r.ok}
        scores = []
        for scorer in (DetectionScorer(judge), FuzzingScorer(judge)):
            scores += score_latents(scorer, bundles, explanations, control=True, seed=0)
        return expl, scores

    expl, scores = run()
    assert all(r.ok for r in expl)
    assert {(s.scorer, s.explanation_source) for s in scores} == {
        ("detection", "own"), ("detection", "control"), ("fuzzing", "own"), ("fuzzing", "control")}
    assert all(e.ok for s in scores for e in s.examples)
    pooled = [r for r in summarize_scores(scores, n_boot=50) if r.latent is None]
    det_own = next(r for r in pooled if r.scorer == "detection" and r.explanation_source == "own")
    assert det_own.summary.auroc == 1.0  # the stub judge recognises "apple" windows
    calls = stub.total_requests
    # Rerun: zero requests reach the server.
    expl2, scores2 = run()
    assert stub.total_requests == calls
    assert [s.probabilities for s in scores2] == [s.probabilities for s in scores]
    # The key reached the server, and nowhere else.
    assert any(SECRET in h for h in stub.auth_headers)
    dumped = [p.read_text() for p in (tmp_path / "cache").rglob("*.json")]
    dumped += [json.dumps(r.to_dict()) for r in expl + expl2]
    dumped += [json.dumps(s.rows()) for s in scores + scores2]
    dumped += [caplog.text, repr(judge.inner), repr(vars(judge.inner))]
    assert dumped and not any(SECRET in d for d in dumped)


def test_failure_reasons_never_contain_the_key(stub, api_key, fast_retry) -> None:
    c = client(stub, fast_retry)
    stub.responder = lambda body: "x"
    stub.faults["messages"].append(Fault("status", 400, "invalid_request_error"))
    # make the server echo the key in its error message, as a hostile proxy might
    original = stub._error

    def echo(h, fault):
        fault.error_type = f"invalid key {SECRET}"
        original(h, fault)

    stub._error = echo
    r = c.complete(EXPLAIN)
    assert not r.ok and SECRET not in r.reason and "[redacted]" in r.reason


def test_missing_key_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(AnthropicConfigError, match="ANTHROPIC_API_KEY"):
        AnthropicClient()


def test_completion_roundtrip() -> None:
    c = Completion("t", usage=Usage(1, 2, 3, 4), cost_usd=None, batch=True)
    assert Completion.from_dict(json.loads(json.dumps(c.to_dict()))) == c
