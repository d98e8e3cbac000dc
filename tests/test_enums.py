"""Each closed list of names is defined once (randsae.enums) and every user reads it from there."""

from __future__ import annotations

import copy

import pytest
import yaml
from _helpers import tiny_config

from randsae import config, enums
from randsae.config import ConfigError, normalise


def _raw_schema() -> dict:
    with open(config.SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def test_the_yaml_schema_does_not_repeat_the_lists():
    raw = _raw_schema()
    variants = raw["properties"]["variants"]
    scorers = raw["properties"]["autointerp"]["properties"]["scorers"]
    splits = raw["properties"]["corpus"]["properties"]["splits"]
    assert "items" not in variants and "default" not in variants and variants["description"]
    assert "items" not in scorers and scorers["default"] == "auto" and scorers["description"]  # auto: resolved in normalise
    assert "properties" not in splits and "required" not in splits and splits["description"]


def test_the_loaded_schema_has_the_lists_from_enums():
    s = config.schema()
    assert s["properties"]["variants"]["items"]["enum"] == list(enums.VARIANTS)
    assert s["properties"]["variants"]["default"] == list(enums.VARIANTS)
    scorers = s["properties"]["autointerp"]["properties"]["scorers"]
    assert scorers["items"]["enum"] == list(enums.SCORERS) and scorers["default"] == "auto"
    splits = s["properties"]["corpus"]["properties"]["splits"]
    assert splits["required"] == list(enums.SPLITS_IN_ORDER) == list(splits["properties"])


def test_defaults_and_errors_come_from_enums(tmp_path):
    cfg = tiny_config(tmp_path / "m", tmp_path / "s")
    del cfg["variants"]
    out = normalise(cfg)
    assert out["variants"] == list(enums.VARIANTS) and out["autointerp"]["scorers"] == list(enums.LLM_SCORERS)
    bad = tiny_config(tmp_path / "m", tmp_path / "s", **{"autointerp.scorers": ["detection", "intruder"]})
    with pytest.raises(ConfigError, match=r"autointerp.scorers\[1\]: 'intruder' is not allowed; allowed: 'detection', 'fuzzing', 'lexical'"):
        normalise(bad)
    no_split = tiny_config(tmp_path / "m", tmp_path / "s")
    del no_split["corpus"]["splits"]["interp"]
    with pytest.raises(ConfigError, match="'interp' is a required property"):
        normalise(no_split)


def test_a_stale_list_in_the_yaml_fails_loudly():
    raw = _raw_schema()
    raw["properties"]["variants"]["items"] = {"enum": ["trained", "step0"]}
    with pytest.raises(RuntimeError, match="variants.items .* filled in from randsae.enums"):
        config._fill_enums(copy.deepcopy(raw))
    same = _raw_schema()
    same["properties"]["variants"]["default"] = list(enums.VARIANTS)  # an agreeing copy is accepted
    assert config._fill_enums(same)["properties"]["variants"]["default"] == list(enums.VARIANTS)


def test_users_read_the_one_definition():
    from randsae.autointerp.scorers import SCORER_CLASSES
    from randsae.models import variants
    from randsae.results import display

    assert variants.VARIANTS is enums.VARIANTS
    assert tuple(SCORER_CLASSES) == enums.SCORERS
    assert display.VARIANT_ORDER == enums.VARIANTS and set(display.VARIANT_COLORS) == set(enums.VARIANTS)
    assert display.sort_variants(["control", "zeta", "trained", "alpha", "step0"]) == [
        "trained", "step0", "control", "alpha", "zeta"]
