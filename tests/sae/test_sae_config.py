"""SaeConfig: defaults, derived values and validation errors that name the field."""

from __future__ import annotations

import math

import pytest

from randsae.sae import SaeConfig, SaeConfigError


def test_defaults_follow_the_paper_and_sparsify():
    c = SaeConfig()
    assert (c.expansion_factor, c.k, c.warmup_steps, c.batch_size) == (64, 32, 1000, 4096)
    assert c.auxk_coef == 1 / 32 and c.grad_clip == 1.0 and c.dead_window_tokens == 10_000_000
    assert c.b_dec_init == "geometric_median" and c.dtype == "float32"
    assert c.resolved_auxk_k(576) == 288
    assert math.isclose(c.resolved_lr(576), 2e-4 / math.sqrt(64 * 576 / 2**14))
    assert SaeConfig(lr=1e-3).resolved_lr(576) == 1e-3
    assert set(SaeConfig.field_docs()) == set(c.to_dict()) | {"checkpoint_every_steps"} and all(SaeConfig.field_docs().values())


def test_checkpoint_interval_is_execution_only():
    """Not saved with the SAE (cfg.json), not part of a checkpoint's identity: two intervals
    give the same to_dict(), and from_dict of that dict is the config with the default."""
    a, b = SaeConfig(checkpoint_every_steps=3), SaeConfig(checkpoint_every_steps=1000)
    assert a != b and a.to_dict() == b.to_dict()
    assert "checkpoint_every_steps" not in a.to_dict()
    assert SaeConfig.from_dict(a.to_dict()) == b


def test_round_trip_through_dict():
    c = SaeConfig(k=16, seed=3, max_tokens=10_000, dtype="bfloat16", b_dec_init="mean")
    assert SaeConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"k": 0}, "k"),
        ({"k": 1.5}, "k"),
        ({"k": True}, "k"),
        ({"lr": -1.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"batch_size": "4096"}, "batch_size"),
        ({"b_dec_init": "zeros"}, "b_dec_init"),
        ({"dtype": "float16"}, "dtype"),
        ({"lr_schedule": "cosine"}, "lr_schedule"),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"auxk_coef": -0.1}, "auxk_coef"),
        ({"auxk_k": 0}, "auxk_k"),
        ({"max_tokens": 10}, "max_tokens"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"expansion_factor": None}, "expansion_factor"),
        ({"no_such_field": 1}, "no_such_field"),
    ],
)
def test_bad_values_name_the_field(data, field):
    with pytest.raises(SaeConfigError, match=field):
        SaeConfig.from_dict(data)


def test_k_larger_than_latents_is_caught_once_width_is_known():
    c = SaeConfig(expansion_factor=1, k=20)
    with pytest.raises(SaeConfigError, match="k"):
        c.check_for_width(16)
