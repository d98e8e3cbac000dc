"""LocalClient on a tiny Llama built from config (tests/conftest.py): batching invariance,
prefix sharing, generation."""

from __future__ import annotations

import pytest
import torch
from ai_helpers import make_bundle

from randsae.autointerp.clients import GenParams
from randsae.autointerp.factory import choose_client_kind, default_client
from randsae.autointerp.local_client import LocalClient
from randsae.autointerp.prompts import detection_prompt, explainer_prompt
from randsae.autointerp.scorers import DetectionScorer
from randsae.autointerp.types import Prompt


@pytest.fixture(scope="module")
def local(judge_model_dir) -> LocalClient:
    return LocalClient(judge_model_dir, batch_size=4, max_new_tokens=8)


def judge_prompts() -> list[Prompt]:
    out = []
    for latent, k in [(0, 5), (1, 2), (2, 4), (3, 1), (4, 3)]:  # different lengths and item counts
        b = make_bundle(latent, n_test=k, n_non=1)
        out.append(detection_prompt(f"explanation {latent} " * (latent + 1), b.test, "logprobs", n_demos=0))
    return out


def test_batched_and_unbatched_probabilities_agree(local, judge_model_dir) -> None:
    prompts = judge_prompts()
    batched = local.answer_probabilities(prompts)
    single = LocalClient(judge_model_dir, batch_size=1)
    one_by_one = [single.answer_probabilities([p])[0] for p in prompts]
    for a, b, p in zip(batched, one_by_one, prompts):
        assert a.ok and b.ok and len(a.probs) == p.n_items
        for da, db in zip(a.probs, b.probs):
            assert da is not None and db is not None
            assert sum(da) == pytest.approx(1.0)
            assert da == pytest.approx(db, abs=1e-5)


def test_prefix_sharing_equals_full_forward(local) -> None:
    prompt = judge_prompts()[0]
    got = local.answer_probabilities([prompt])[0]
    for i, cue in enumerate(prompt.cues):
        text = local.render(prompt, cue)
        ids = torch.tensor([local._encode(text)])
        with torch.no_grad():
            logp = torch.log_softmax(local.lm(input_ids=ids).logits[0, -1].float(), -1)
        answer_ids = local._answer_ids(text, ("0", "1"))
        mass = torch.stack([torch.logsumexp(logp[a], 0) for a in answer_ids])
        expected = torch.softmax(mass, 0).tolist()
        assert got.probs[i] == pytest.approx(tuple(expected), abs=1e-5)


def test_greedy_generation_is_batch_invariant(local, judge_model_dir) -> None:
    prompts = [explainer_prompt(make_bundle(i).explainer[: i + 1], prefill=True) for i in range(3)]
    batched = local.complete_many(prompts, GenParams(max_tokens=6))
    single = LocalClient(judge_model_dir, batch_size=1, max_new_tokens=8)
    one = [single.complete(p, GenParams(max_tokens=6)) for p in prompts]
    assert [c.text for c in batched] == [c.text for c in one]
    assert all(c.client == "local" and c.model == judge_model_dir.name for c in batched)
    assert all(0 < c.usage.output_tokens <= 6 for c in batched if c.ok)


def test_chat_template_is_used_when_present(local) -> None:
    p = Prompt(system="SYS", user="USER", prefill="Explanation:")
    assert local.render(p).endswith("Assistant:\nExplanation:")
    saved = local.tokenizer.chat_template
    try:
        local.tokenizer.chat_template = (
            "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}[assistant]{% endif %}"
        )
        assert local.render(p, "Example 1:") == "[system]SYS[user]USER[assistant]Explanation: Example 1:"
    finally:
        local.tokenizer.chat_template = saved


def test_scorer_runs_on_the_local_judge(local) -> None:
    res = DetectionScorer(local, n_demos=0).score([make_bundle(0, n_test=4, n_non=2)], {0: "apples"})[0]
    assert len(res.examples) == 6 and all(e.ok for e in res.examples)
    assert res.n_prompts == 2 and res.client == "local"


def test_default_client_choice(judge_model_dir, monkeypatch, tmp_path) -> None:
    assert choose_client_kind({"autointerp": {"client": "auto"}}, env={}) == "local"
    assert choose_client_kind({"client": "auto"}, env={"ANTHROPIC_API_KEY": "k"}) == "anthropic"
    assert choose_client_kind({"client": "local"}, env={"ANTHROPIC_API_KEY": "k"}) == "local"
    with pytest.raises(ValueError):
        choose_client_kind({"client": "openai"}, env={})
    c = default_client({"autointerp": {"client": "auto", "local_model": str(judge_model_dir)}}, env={},
                       cache_dir=tmp_path)
    assert (c.name, c.model) == ("local", judge_model_dir.name)
    a = default_client({"client": "anthropic", "anthropic_model": "claude-haiku-4-5"},
                       env={"ANTHROPIC_API_KEY": "sk-x"}, base_url="http://127.0.0.1:9")
    assert (a.name, a.model) == ("anthropic", "claude-haiku-4-5")
    cached = default_client({"client": "anthropic"}, env={"ANTHROPIC_API_KEY": "sk-x"}, cache_dir=tmp_path / "c",
                            base_url="http://127.0.0.1:9")
    assert cached.inner._journal.root == tmp_path / "c" / "batch-journal"  # type: ignore[attr-defined]


def test_unknown_local_model_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="neither a model directory"):
        LocalClient(tmp_path / "nope")
