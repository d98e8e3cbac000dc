from __future__ import annotations

import json

import pytest
from ai_helpers import make_bundle

from randsae.autointerp.types import (
    Example,
    LatentExamples,
    Prompt,
    examples_from_json,
    examples_to_json,
)


def test_bundle_json_roundtrip() -> None:
    bundles = [make_bundle(3), make_bundle(7)]
    data = json.loads(json.dumps(examples_to_json(bundles)))
    assert examples_from_json(data) == bundles


def test_example_keeps_provenance_and_validates() -> None:
    ex = Example(["a", "b"], [0.0, 2], latent=1, quantile=0, activating=True, token_ids=[5, 6], source=(3, 10))
    assert Example.from_dict(json.loads(json.dumps(ex.to_dict()))) == ex
    assert ex.max_activation == 2.0 and ex.text == "ab"
    with pytest.raises(ValueError):
        Example(["a"], [1.0, 2.0], latent=1)
    with pytest.raises(ValueError):
        Example(["a"], [1.0], latent=1, activating=True)  # activating needs a quantile
    with pytest.raises(ValueError):
        Example(["a"], [float("nan")], latent=1)


def test_bundle_rejects_mixed_latents_and_labels() -> None:
    b = make_bundle(1)
    with pytest.raises(ValueError):
        LatentExamples(2, b.explainer, b.test, b.non_activating)
    with pytest.raises(ValueError):
        LatentExamples(1, b.explainer, b.non_activating, b.non_activating)


def test_prompt_roundtrip_and_cues() -> None:
    p = Prompt(system="s", user="u", context="c", cues=("A:", "B:"), n_items=2)
    assert Prompt.from_dict(p.to_dict()) == p
    assert p.user_text == "c\n\nu"
    with pytest.raises(ValueError):
        Prompt(system="s", user="u", cues=("A:",), n_items=2)
