"""Explainers, scorers, the control and the summaries, on an in-process fake judge."""

from __future__ import annotations

from collections import Counter

import pytest
from ai_helpers import make_bundle
from fake_client import FakeClient
from stub_anthropic import EXAMPLE_RE

from randsae.autointerp.explainers import ExplanationResult, LLMExplainer, TokenListExplainer
from randsae.autointerp.prompts import HL_OPEN
from randsae.autointerp.scorers import (
    CONTROL,
    OWN,
    DetectionScorer,
    FuzzingScorer,
    control_assignment,
    score_latents,
    summarize_scores,
)


def test_token_list_explainer_is_deterministic() -> None:
    b = make_bundle(0)
    r1, r2 = TokenListExplainer(3).explain([b]), TokenListExplainer(3).explain([b])
    assert r1 == r2 and r1[0].ok
    assert r1[0].explanation.startswith('the tokens "apple"')
    assert r1[0].model == "token_list"
    assert ExplanationResult.from_dict(r1[0].to_dict()) == r1[0]


def test_llm_explainer_success_and_failures() -> None:
    ok = LLMExplainer(FakeClient()).explain([make_bundle(0)])[0]
    assert ok.ok and ok.explanation == "the word apple" and ok.client == "fake" and ok.cost_usd == 0.001
    failed = LLMExplainer(FakeClient(fail_every=1)).explain([make_bundle(0)])[0]
    assert not failed.ok and failed.reason.startswith("api")
    junk = LLMExplainer(FakeClient(explanation="just rambling")).explain([make_bundle(0)])[0]
    assert not junk.ok and junk.reason.startswith("parse")

    class Broken(FakeClient):
        def complete_many(self, *a, **k):  # type: ignore[override]
            raise RuntimeError("boom")

    crashed = LLMExplainer(Broken()).explain([make_bundle(0), make_bundle(1)])
    assert [r.ok for r in crashed] == [False, False]


def test_detection_groups_are_seeded_and_complete() -> None:
    b = make_bundle(0, n_test=12, n_non=6)
    s0, s0b, s1 = (DetectionScorer(FakeClient(), seed=s) for s in (0, 0, 1))
    g0 = [[it.index for it in g] for g in s0.groups(b)]
    assert g0 == [[it.index for it in g] for g in s0b.groups(b)]
    assert g0 != [[it.index for it in g] for g in s1.groups(b)]
    assert sorted(i for g in g0 for i in g) == list(range(18))
    assert [len(g) for g in g0] == [5, 5, 5, 3]
    res = s0.score([b], {0: "apple"})[0]
    assert [e.index for e in res.examples] == list(range(18))
    assert sum(e.label for e in res.examples) == 12
    assert all(e.probability is not None and e.prediction == (e.probability > 0.5) for e in res.examples)
    assert res.n_prompts == 4 and res.usage.input_tokens == 80 and res.cost_usd == pytest.approx(0.008)


def test_fuzzing_marks() -> None:
    b = make_bundle(0, n_test=6, n_non=6)
    scorer = FuzzingScorer(FakeClient())
    items = scorer.items(b)
    counts = {sum(a > 0 for a in ex.activations) for ex in b.test}
    for it in items:
        assert it.highlight is not None and len(it.highlight) == len(it.example.tokens)
        if it.label:
            assert list(it.highlight) == [a > 0 for a in it.example.activations]
        else:
            assert sum(it.highlight) in counts
    assert [it.highlight for it in items] == [it.highlight for it in FuzzingScorer(FakeClient()).items(b)]
    prompt = scorer.prompt("apple", items[:5])
    assert len(EXAMPLE_RE.findall(prompt.user)) == 5 and HL_OPEN in prompt.user


def test_control_assignment_is_a_seeded_derangement() -> None:
    latents = [5, 9, 2, 7, 11]
    a = control_assignment(latents, seed=3)
    assert a == control_assignment(latents, seed=3)
    assert sorted(a) == sorted(latents) and sorted(a.values()) == sorted(latents)
    assert all(k != v for k, v in a.items())
    assert control_assignment([1]) == {}


def test_score_latents_with_control_and_summaries() -> None:
    bundles = [make_bundle(i) for i in range(4)]
    explanations = {0: "apple", 1: "apple", 2: "banana", 3: "apple"}
    results = score_latents(DetectionScorer(FakeClient()), bundles, explanations, control=True, seed=0)
    sources = Counter(r.explanation_source for r in results)
    assert sources == {OWN: 4, CONTROL: 4}
    for r in results:
        assert (r.explanation_latent == r.latent) == (r.explanation_source == OWN)
        assert r.explanation == explanations[r.explanation_latent]
        assert all(e.explanation_source == r.explanation_source for e in r.examples)
    rows = summarize_scores(results, n_boot=50)
    per_latent = [r for r in rows if r.latent is not None]
    pooled = {r.explanation_source: r for r in rows if r.latent is None}
    assert len(per_latent) == 8 and set(pooled) == {OWN, CONTROL}
    assert pooled[OWN].summary.n == 4 * 15
    own0 = next(r for r in per_latent if r.latent == 0 and r.explanation_source == OWN)
    assert own0.summary.auroc == 1.0 and own0.summary.balanced_accuracy == 1.0
    assert "auroc_lo" in pooled[OWN].to_dict()


def test_missing_explanations_and_failing_judges_are_recorded() -> None:
    bundles = [make_bundle(0), make_bundle(1)]
    res = DetectionScorer(FakeClient(fail_every=2)).score(bundles, {0: "apple"})
    assert res[1].ok is False and res[1].reason == "no explanation" and not res[1].examples
    assert res[0].n_failed_prompts == 1
    failed = [e for e in res[0].examples if not e.ok]
    assert 0 < len(failed) <= 5 and all(e.probability is None and "api" in e.reason for e in failed)
    s = summarize_scores(res, n_boot=10)[0].summary
    assert s.n_failed == len(failed) and s.n == 15 - len(failed)
