"""Fixtures for the auto-interp tests: a stub Anthropic server, a fake API key, fast retry
policies and a tiny judge model (helpers live in ai_helpers.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from ai_helpers import SECRET, make_judge_model_dir  # noqa: E402
from stub_anthropic import StubAnthropic  # noqa: E402

from randsae.autointerp.retry import RetryPolicy  # noqa: E402


@pytest.fixture
def stub() -> Iterator[StubAnthropic]:
    s = StubAnthropic()
    yield s
    s.close()


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    return SECRET


@pytest.fixture
def fast_retry() -> RetryPolicy:
    return RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.005)


@pytest.fixture(scope="session")
def judge_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_judge_model_dir(tmp_path_factory.mktemp("judge") / "tiny-judge")
