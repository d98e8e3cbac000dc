from __future__ import annotations

import json

import pytest
from fake_client import FakeClient, Interrupted

from randsae.autointerp.cache import CachedClient, ResponseCache
from randsae.autointerp.types import Prompt


def prompts(n: int) -> list[Prompt]:
    return [Prompt(system="sys", user=f'<examples>\n<example id="1">apple {i}</example>\n</examples>',
                   context="<explanation>apple</explanation>") for i in range(n)]


def test_rerun_makes_no_calls(tmp_path) -> None:
    inner = FakeClient()
    client = CachedClient(inner, ResponseCache(tmp_path))
    first = client.answer_probabilities(prompts(6))
    assert inner.calls == 6 and not any(r.completion.cached for r in first)
    again = CachedClient(FakeClient(), ResponseCache(tmp_path))
    second = again.answer_probabilities(prompts(6))
    assert again.inner.calls == 0  # type: ignore[attr-defined]
    assert [r.probs for r in second] == [r.probs for r in first]
    assert all(r.completion.cached and r.completion.cost_usd == 0 for r in second)
    assert again.complete(prompts(1)[0]).text  # a different call kind is a different key
    assert again.inner.calls == 1  # type: ignore[attr-defined]


def test_interrupted_run_resumes_without_repeating(tmp_path) -> None:
    with pytest.raises(Interrupted):
        CachedClient(FakeClient(stop_after=4), ResponseCache(tmp_path)).complete_many(prompts(10))
    resumed = FakeClient()
    out = CachedClient(resumed, ResponseCache(tmp_path)).complete_many(prompts(10))
    assert resumed.calls == 6 and all(c.ok for c in out)
    assert sum(c.cached for c in out) == 4
    assert not list(tmp_path.rglob("*.tmp"))  # writes are temp-then-rename


def test_transient_failures_are_not_cached(tmp_path) -> None:
    first = CachedClient(FakeClient(fail_every=2), ResponseCache(tmp_path)).complete_many(prompts(4))
    assert [c.ok for c in first] == [True, False, True, False]
    retry = FakeClient()
    second = CachedClient(retry, ResponseCache(tmp_path)).complete_many(prompts(4))
    assert retry.calls == 2 and all(c.ok for c in second)


def test_duplicate_prompts_are_called_once(tmp_path) -> None:
    inner = FakeClient()
    seen: list[int] = []
    out = CachedClient(inner, ResponseCache(tmp_path)).complete_many(prompts(1) * 3, on_result=lambda i, _: seen.append(i))
    assert inner.calls == 1 and len(out) == 3 and sorted(seen) == [0, 1, 2]


def test_key_depends_on_client_model_prompt_and_params(tmp_path) -> None:
    cache = ResponseCache(tmp_path)
    client = CachedClient(FakeClient(), cache)
    base = client._payload("complete", prompts(1)[0], {"params": {"max_tokens": 1}})
    from randsae.autointerp.cache import request_key

    k = request_key(base)
    assert k != request_key({**base, "model": "other"})
    assert k != request_key({**base, "params": {"max_tokens": 2}})
    assert k == request_key(json.loads(json.dumps(base)))
    corrupt = cache.path(k)
    corrupt.parent.mkdir(parents=True, exist_ok=True)
    corrupt.write_text("{not json")
    assert cache.get(k) is None  # a corrupt entry is a miss, not a crash
