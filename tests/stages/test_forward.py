"""randsae.forward, the one model-forward loop: hidden states equal a plain hooked forward,
the pass stops after the deepest hooked layer, control noise is per sequence (any batch size,
any order), and the tokens source, indices and progress bar behave as documented."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM

from randsae import forward, zarr_io
from randsae.models.arch import get_blocks
from randsae.models.artifact import LoadedModel
from randsae.models.variants import control_state, install_control_hook

N_SEQ, CTX = 7, 12


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tokens")
    ids = np.random.default_rng(0).integers(2, 300, (N_SEQ, CTX), dtype=np.int32)
    zarr_io.create_array(d / "tokens.zarr", ids.shape, (3, CTX), "int32")[:] = ids  # several Zarr chunks
    return d


def loaded_model(model_dir, variant: str) -> LoadedModel:
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    if variant == "control":
        install_control_hook(model, 11)
    return LoadedModel(model, None, {"variant": variant, "seed": 11})


def test_hidden_equals_a_full_forward_and_stops_after_the_deepest_layer(tiny_model_dir, tokens_dir):
    loaded = loaded_model(tiny_model_dir, "trained")
    tokens = zarr_io.open_array(tokens_dir / "tokens.zarr")[:]
    calls = {"norm": 0}
    loaded.model.model.norm.register_forward_hook(lambda *_: calls.__setitem__("norm", calls["norm"] + 1))
    got = list(forward.hidden_batches(loaded, tokens_dir, range(N_SEQ), [0, 1], 3, "cpu"))
    assert calls["norm"] == 0  # no final norm (nor LM head): the pass stopped after block 1
    assert [b.sequences.tolist() for b in got] == [[0, 1, 2], [3, 4, 5], [6]]
    seen = {}
    handles = [get_blocks(loaded.model)[i].register_forward_hook(
        lambda m, a, o, i=i: seen.__setitem__(i, o[0] if isinstance(o, tuple) else o)) for i in (0, 1)]
    with torch.no_grad():
        loaded.model(input_ids=torch.from_numpy(tokens).long())
    for h in handles:
        h.remove()
    for layer in (0, 1):
        stacked = torch.cat([b.hidden[layer] for b in got])
        assert stacked.shape == (N_SEQ, CTX, 32)
        torch.testing.assert_close(stacked, seen[layer], rtol=1e-5, atol=1e-5)
    assert torch.equal(torch.cat([b.input_ids for b in got]), torch.from_numpy(tokens).long())


def test_control_noise_is_per_sequence_whatever_the_batching_or_order(tiny_model_dir, tokens_dir):
    loaded = loaded_model(tiny_model_dir, "control")
    ref = torch.cat([b.hidden[1] for b in forward.hidden_batches(loaded, tokens_dir, range(N_SEQ), [1], N_SEQ, "cpu")])
    order = np.array([5, 0, 6, 2, 2, 3])  # shuffled, with a repeat
    got = list(forward.hidden_batches(loaded, tokens_dir, order, [1], 4, "cpu"))
    assert [b.sequences.tolist() for b in got] == [[5, 0, 6, 2], [2, 3]]
    tokens = zarr_io.open_array(tokens_dir / "tokens.zarr")[:]
    assert torch.equal(torch.cat([b.input_ids for b in got]), torch.from_numpy(tokens[order]).long())
    torch.testing.assert_close(torch.cat([b.hidden[1] for b in got]), ref[order], rtol=1e-5, atol=1e-5)
    # The trained model's hidden states are not these: the noise really replaced the embedding.
    trained = loaded_model(tiny_model_dir, "trained")
    plain = next(forward.hidden_batches(trained, tokens_dir, range(N_SEQ), [1], N_SEQ, "cpu")).hidden[1]
    assert not torch.allclose(plain, ref, atol=1e-2)


def test_noise_seeds_hold_while_the_caller_has_the_batch_and_are_restored(tiny_model_dir, tokens_dir):
    loaded = loaded_model(tiny_model_dir, "control")
    state = control_state(loaded.model)
    assert state is not None and state.row_seeds is None
    for batch in forward.token_batches(loaded, tokens_dir, range(2, 6), 2, "cpu"):
        assert state.row_seeds == forward.row_seeds(11, batch.sequences)  # the caller's model calls see them
        break
    assert state.row_seeds is None  # leaving the loop early restored the stream mode
    assert forward.row_seeds(11, np.array([3, 4])) == forward.row_seeds(11, np.array([4, 3]))[::-1]


def test_shared_progress_bar_counts_tokens(tiny_model_dir, tokens_dir):
    loaded = loaded_model(tiny_model_dir, "trained")
    bar = tqdm(total=N_SEQ * CTX, file=io.StringIO())
    for r in (range(0, 4), range(4, N_SEQ)):  # two chunks, one bar
        for _ in forward.token_batches(loaded, tokens_dir, r, 3, "cpu", bar):
            pass
    assert bar.n == N_SEQ * CTX
    bar.close()


def test_bad_inputs_are_named(tiny_model_dir, tokens_dir, tmp_path):
    loaded = loaded_model(tiny_model_dir, "trained")
    with pytest.raises(IndexError, match="out of range: the tokens array has 7 sequences"):
        list(forward.token_batches(loaded, tokens_dir, [0, 7], 2, "cpu"))
    with pytest.raises(FileNotFoundError, match="tokens.zarr"):
        list(forward.token_batches(loaded, tmp_path, range(1), 2, "cpu"))
    with pytest.raises(ValueError, match="batch_size"):
        list(forward.token_batches(loaded, tokens_dir, range(1), 0, "cpu"))
    with pytest.raises(ValueError, match="out of range"):
        list(forward.hidden_batches(loaded, tokens_dir, range(1), [3], 1, "cpu"))
