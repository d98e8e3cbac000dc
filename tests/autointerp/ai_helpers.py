"""Helpers for the auto-interp tests (importable as ``ai_helpers``): synthetic latent examples
in which "apple" marks the activating windows, and a tiny judge model built from config."""

from __future__ import annotations

import random
from pathlib import Path

from randsae.autointerp.types import NON_ACTIVATING, Example, LatentExamples

SECRET = "sk-ant-test-DO-NOT-LEAK-0123456789"

WORDS = ["the", "king", "went", "into", "a", "house", "and", "said", "unto", "them", "of", "land", "water"]


def make_example(latent: int, rng: random.Random, activating: bool, quantile: int = NON_ACTIVATING,
                 window: int = 12) -> Example:
    tokens = [" " + rng.choice(WORDS) for _ in range(window)]
    acts = [0.0] * window
    if activating:
        for pos in rng.sample(range(1, window), 2):
            tokens[pos] = " apple"
            acts[pos] = 1.0 + quantile + rng.random()
        tokens[0] = " red"
        acts[0] = 0.1  # below 0.3 x max: not highlighted for the explainer
    return Example(tokens, acts, latent, quantile if activating else NON_ACTIVATING, activating)


def make_bundle(latent: int, seed: int = 0, n_explainer: int = 6, n_test: int = 10, n_non: int = 5,
                n_quantiles: int = 5) -> LatentExamples:
    rng = random.Random(f"{seed}:{latent}")
    return LatentExamples(
        latent=latent,
        explainer=[make_example(latent, rng, True, i % n_quantiles) for i in range(n_explainer)],
        test=[make_example(latent, rng, True, i % n_quantiles) for i in range(n_test)],
        non_activating=[make_example(latent, rng, False) for _ in range(n_non)],
        meta={"n_activations": 300},
    )


def make_judge_model_dir(path: Path, *, layers: int = 2, hidden: int = 32, vocab: int = 600, seed: int = 0) -> Path:
    """A tiny Llama + a byte-level BPE tokenizer trained here on the prompts' own text (fast,
    and every byte, digits included, is encodable), saved like a Hub checkpoint."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    from randsae.autointerp.prompts import EXPLAINER_SYSTEM, scorer_system

    corpus = [EXPLAINER_SYSTEM, *(scorer_system(k, m) for k in ("detection", "fuzzing") for m in ("stated", "logprobs"))]
    corpus += [" ".join(WORDS + ["apple", "red", "Example", "Answer", "0", "1"])] * 20
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<eos>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=4096, tie_word_embeddings=True,
                      eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
