"""Stage level: an API outage publishes nothing; after recovery the same build publishes, and
retries only what is missing (the explain and score stages against the stub server)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from ai_helpers import SECRET, make_bundle
from stub_anthropic import Fault

from randsae.autointerp.anthropic_client import DEFAULT_MODEL
from randsae.autointerp.outcomes import TransientLLMFailures
from randsae.stages import build, stage_def
from randsae.stages.explain import llm_params
from randsae.store import Store

pytestmark = pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")

AI = {"explainer": "llm", "client": "anthropic", "anthropic_model": DEFAULT_MODEL, "local_model": "unused"}
FAST = {"llm_max_attempts": 2, "llm_retry_base_s": 0.001, "batch_poll_s": 0.001}


@pytest.fixture
def store(tmp_path, stub, api_key, monkeypatch) -> Store:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", stub.base_url)  # the SDK's own setting: the stub stands in
    s = Store(tmp_path / "store")
    spec = {"stage": "examples", "version": stage_def("examples").version, "key": "ex0", "name": "examples/t",
            "params": {}, "labels": {}, "inputs": {}}
    with s.publish(spec) as b:
        (b.workdir / "examples.json").write_text(json.dumps([make_bundle(i).to_dict() for i in range(3)]))
    return s


def explain_spec() -> dict:
    return {"stage": "explain", "version": stage_def("explain").version, "key": "e0", "name": "explain/t",
            "params": llm_params(AI), "labels": {}, "inputs": {"examples": "examples/ex0"}}


def score_spec() -> dict:
    params = {**llm_params(AI), "scorer": "detection", "examples_per_prompt": 5, "seed": 0}
    return {"stage": "score", "version": stage_def("score").version, "key": "s0", "name": "score/t/detection",
            "params": params, "labels": {}, "inputs": {"explain": "explain/e0", "examples": "examples/ex0"}}


def meta(store: Store, stage: str, key: str) -> dict:
    return json.loads((store.path(stage, key) / "meta.json").read_text())


@pytest.mark.parametrize("batch", [True, False], ids=["batches", "messages"])
def test_outage_publishes_nothing_and_recovery_publishes(store, stub, batch) -> None:
    settings = {**FAST, "anthropic_batch": batch}
    stub.outage = Fault("status", 500)
    with pytest.raises(TransientLLMFailures, match=r"explain explain/t: 3 of 3 LLM calls failed .*HTTP 500"):
        build(explain_spec(), store, settings)
    assert not store.exists("explain", "e0")
    stub.outage = None
    build(explain_spec(), store, settings)
    rows = pq.read_table(store.path("explain", "e0") / "explanations.parquet").to_pylist()
    assert [r["ok"] for r in rows] == [True] * 3 and {r["explanation"] for r in rows} == {"the word apple"}
    info = meta(store, "explain", "e0")["info"]
    assert info["llm_calls"] == 3 and info["llm_failed_calls"] == 0 and info["llm_failed_transient"] == 0
    assert (stub.created_batches > 0) == batch

    stub.outage = Fault("status", 529, "overloaded_error")
    with pytest.raises(TransientLLMFailures, match=r"score score/t/detection: \d+ of \d+ LLM calls failed"):
        build(score_spec(), store, settings)
    assert not store.exists("score", "s0")
    stub.outage = None
    build(score_spec(), store, settings)
    scores = pq.read_table(store.path("score", "s0") / "scores.parquet").to_pylist()
    assert scores and all(r["ok"] for r in scores)
    info = meta(store, "score", "s0")["info"]
    assert info["llm_failed_transient"] == 0 and info["llm_calls"] > 0
    assert info["prompt_cache_hit_rate"] is not None and info["prompt_cache_hit_rate"] > 0
    leaked = [p for p in store.root.rglob("*") if p.is_file() and SECRET in p.read_text(errors="ignore")]
    assert not leaked


def test_rerun_after_a_partial_failure_asks_only_for_what_is_missing(store, stub) -> None:
    settings = {**FAST, "anthropic_batch": False}
    doomed: list[str] = []

    def fail_one_prompt(body: dict) -> Fault | None:  # the first prompt seen fails on every attempt
        text = json.dumps(body["messages"])
        doomed.append(doomed[0] if doomed else text)
        return Fault("status", 500) if text == doomed[0] else None

    stub.message_fault_for = fail_one_prompt
    with pytest.raises(TransientLLMFailures, match=r"1 of 3 LLM calls failed .*HTTP 500"):
        build(explain_spec(), store, settings)
    before = stub.counts["messages"]
    stub.message_fault_for = lambda body: None
    build(explain_spec(), store, settings)
    assert stub.counts["messages"] == before + 1  # the two successes came from the response cache
    info = meta(store, "explain", "e0")["info"]
    assert info["llm_cached_calls"] == 2 and info["llm_calls"] == 3


def test_answers_are_kept_and_counted(store, stub) -> None:
    settings = {**FAST, "anthropic_batch": False}
    stub.faults["messages"].extend([Fault("refusal"), Fault("status", 400, "invalid_request_error")])
    build(explain_spec(), store, settings)
    rows = pq.read_table(store.path("explain", "e0") / "explanations.parquet").to_pylist()
    assert sum(not r["ok"] for r in rows) == 2
    info = meta(store, "explain", "e0")["info"]
    assert info["llm_failed_answer"] == 2 and info["llm_failed_transient"] == 0 and info["llm_failed_calls"] == 2
