"""Fixtures for the metrics tests; the helpers live in metrics_fixtures.py."""

from __future__ import annotations

import pytest
import torch
from metrics_fixtures import BUILDERS, HIDDEN, VOCAB, TinyTopK, build_model
from torch import nn


@pytest.fixture(scope="session", params=sorted(BUILDERS))
def tiny_model(request: pytest.FixtureRequest) -> tuple[str, nn.Module]:
    return request.param, build_model(request.param)


@pytest.fixture
def tiny_sae() -> TinyTopK:
    return TinyTopK(HIDDEN, 4 * HIDDEN, k=4)


@pytest.fixture
def token_ids() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB, (4, 12), generator=g)
