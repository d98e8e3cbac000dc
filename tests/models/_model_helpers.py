"""Builders for the model tests (importable as `_model_helpers`): tiny models from config with
"trained-looking" weights, a small WordLevel tokenizer, Hub-like directories. Nothing is
downloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    GPTNeoXConfig,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

SENTENCES = [
    "the cat sat on the mat and looked at the dog",
    "a dog ran in the park while the sun was shining",
    "we read a book about the sea , the wind and the rain .",
    "she wrote a letter to her friend in the city",
]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer trained on a few sentences (vocabulary of ~40 words)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[EOS]"])
    tok.train_from_iterator(SENTENCES, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )


def neox_config() -> GPTNeoXConfig:
    """Untied embeddings, LayerNorm gains and biases, attention biases: many 1-D tensors."""
    return GPTNeoXConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        rotary_pct=0.25,
        tie_word_embeddings=False,
        bos_token_id=2,
        eos_token_id=2,
    )


def llama_config() -> LlamaConfig:
    """Tied embeddings (like SmolLM2), RMSNorm gains, no biases."""
    return LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=2,
        eos_token_id=2,
        pad_token_id=1,
    )


@torch.no_grad()
def make_trained(config, seed: int) -> PreTrainedModel:
    """A model from config whose every tensor is perturbed, so that norm gains and biases are
    not constant and means are not zero, as in a trained checkpoint."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    gen = torch.Generator().manual_seed(seed + 1)
    for param in model.parameters():
        noise = torch.randn(param.shape, generator=gen)
        param.mul_(1.5).add_(0.1 * noise).add_(0.05)
    return model.eval()


def save_hub_like(model: PreTrainedModel, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path
