"""Config validation: both shipped configs validate; every kind of mistake is an error
that names the key path and what is allowed; normalisation is order- and default-blind."""

from __future__ import annotations

import copy

import pytest
import yaml
from _helpers import tiny_config

from randsae.config import CONFIG_DIR, DEFAULT_CONFIG, ConfigError, load_config, normalise


@pytest.fixture
def cfg(tmp_path):
    return tiny_config(tmp_path / "model", tmp_path / "store")


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml"])
def test_shipped_configs_validate(name):
    cfg = load_config(CONFIG_DIR / name)
    assert cfg["models"] and cfg["variants"]


def test_paper_grid_matches_the_paper():
    cfg = load_config(CONFIG_DIR / "paper.yaml")
    m = cfg["models"]
    assert set(m) == {"pythia-70m", "pythia-160m", "pythia-410m", "pythia-1b", "pythia-6.9b"}
    assert all("deduped" in v["source"]["id"] for v in m.values())
    assert m["pythia-70m"]["layers"] == list(range(6))
    assert m["pythia-410m"]["layers"] == list(range(24))
    assert m["pythia-1b"]["layers"] == list(range(0, 16, 2))
    assert m["pythia-6.9b"]["layers"] == list(range(0, 32, 4))
    assert set(cfg["variants"]) == {"trained", "step0", "rerandomized", "rerandomized_no_embed", "control"}
    assert (cfg["sae"]["expansion"], cfg["sae"]["k"]) == (64, 32)
    assert cfg["corpus"]["splits"]["train"]["tokens"] == 100_000_000
    assert cfg["autointerp"]["n_latents"] == 100


def _error(cfg) -> str:
    with pytest.raises(ConfigError) as e:
        normalise(cfg)
    return str(e.value)


def test_unknown_top_level_key_is_named_with_suggestion(cfg):
    cfg["sedd"] = 1
    msg = _error(cfg)
    assert "sedd: unknown key" in msg and "did you mean 'seed'" in msg


def test_misspelled_nested_key(cfg):
    cfg["models"]["tiny"]["lyaers"] = cfg["models"]["tiny"].pop("layers")
    msg = _error(cfg)
    assert "models.tiny.lyaers: unknown key" in msg
    assert "did you mean 'layers'" in msg
    assert "models.tiny: 'layers' is a required property" in msg


def test_misspelled_key_in_stage_section(cfg):
    cfg["sae"]["expanson"] = 4
    assert "sae.expanson: unknown key" in _error(cfg)


def test_wrong_type(cfg):
    cfg["models"]["tiny"]["layers"] = [1, "two"]
    msg = _error(cfg)
    assert "models.tiny.layers[1]: must be of type integer" in msg


def test_out_of_range(cfg):
    cfg["sae"]["k"] = 0
    msg = _error(cfg)
    assert "sae.k" in msg
    cfg = tiny_config("m", "s")
    cfg["corpus"]["splits"]["train"]["ctx_len"] = 1
    assert "corpus.splits.train.ctx_len: 1 is out of range; must be >= 2" in _error(cfg)


def test_bad_enum_lists_allowed_values(cfg):
    cfg["variants"] = ["trained", "randomised"]
    msg = _error(cfg)
    assert "variants[1]: 'randomised' is not allowed" in msg and "'rerandomized'" in msg


def test_source_kind_needs_its_fields(cfg):
    cfg["models"]["tiny"]["source"] = {"kind": "hub"}
    assert "models.tiny.source: kind 'hub' needs id" in _error(cfg)
    cfg = tiny_config("m", "s")
    cfg["corpus"]["source"] = {"kind": "files", "format": "jsonl"}
    assert "corpus.source: kind 'files' needs paths" in _error(cfg)


def test_bad_model_name(cfg):
    cfg["models"]["Tiny Model"] = cfg["models"].pop("tiny")
    assert "'Tiny Model' is not allowed" in _error(cfg)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_error_names_the_file(tmp_path, cfg):
    cfg["seed"] = -1
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"(?s)c\.yaml.*seed: -1 is out of range"):
        load_config(p)


def test_defaults_written_or_omitted_normalise_equal(cfg):
    full = normalise(cfg)
    again = normalise(copy.deepcopy(full))
    assert again == full
    assert full["sae"]["warmup_steps"] == 2 and full["sae"]["auxk_coef"] == 0.03125
    assert full["activations"]["dtype"] == "bfloat16"  # a whole section filled in


def test_numbers_normalise_to_float(cfg):
    cfg["sae"]["grad_clip"] = 1
    assert isinstance(normalise(cfg)["sae"]["grad_clip"], float)


def test_default_config_file_is_the_embedded_default():
    assert DEFAULT_CONFIG.name == "config.yaml" and DEFAULT_CONFIG.is_file()


def test_a_duplicate_key_is_an_error_naming_it(tmp_path, cfg):
    p = tmp_path / "dup.yaml"
    text = yaml.safe_dump(cfg, sort_keys=False)
    p.write_text(text.replace("  k: 4\n", "  k: 4\n  k: 8\n") + "seed: 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "dup.yaml" in msg
    k_line = text.splitlines().index("  k: 4") + 1
    assert f"sae.k: duplicate key (lines {k_line} and {k_line + 1}); the last one would silently win" in msg
    assert "seed: duplicate key" in msg
    p.write_text(text)  # the same config without the repeats loads
    assert load_config(p)["sae"]["k"] == 4


def test_duplicate_keys_inside_lists_and_merges(tmp_path):
    from randsae.yaml_keys import duplicate_keys

    assert duplicate_keys("a: [{x: 1, x: 2}]\n") == ["a[0].x: duplicate key (lines 1 and 1); the last one would silently win"]
    assert duplicate_keys("base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n") == []
    assert duplicate_keys("a: {b: 1}\nc: {b: 1}\n") == []  # equal names in different mappings
