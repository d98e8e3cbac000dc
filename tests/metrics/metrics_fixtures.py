"""Tiny models and a tiny TopK SAE for the metrics tests (built from config: no downloads).

A uniquely named module (not conftest) so test files can import from it unambiguously.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

VOCAB = 64
HIDDEN = 32
N_LAYERS = 3


class TinyTopK(nn.Module):
    """A minimal TopK SAE implementing randsae.metrics.SparseCoder."""

    def __init__(self, d: int, n_latents: int, k: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.n_latents, self.k = n_latents, k
        self.w_enc = nn.Parameter(torch.randn(d, n_latents, generator=g) / d**0.5)
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.w_dec = nn.Parameter(torch.randn(n_latents, d, generator=g) / d**0.5)
        self.b_dec = nn.Parameter(torch.randn(d, generator=g) * 0.1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = F.relu((x - self.b_dec) @ self.w_enc + self.b_enc)
        values, indices = pre.topk(self.k, dim=-1)
        return values, indices

    def decode(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return (
            F.embedding_bag(indices, self.w_dec, per_sample_weights=values, mode="sum") + self.b_dec
        )


def _neox() -> nn.Module:
    cfg = GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=N_LAYERS, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    return GPTNeoXForCausalLM(cfg)


def _llama() -> nn.Module:
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=N_LAYERS, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    return LlamaForCausalLM(cfg)


BUILDERS: dict[str, Callable[[], nn.Module]] = {"gpt_neox": _neox, "llama": _llama}


def build_model(arch: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = BUILDERS[arch]()
    # Random init is small; scale weights up so the zero branch differs visibly from clean.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(5.0)
    return model.eval()
