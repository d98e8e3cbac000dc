"""Cost of the full SAE metrics evaluation against one bare forward of the same tokens.

Full evaluation = clean forward (prefix once + clean continuation) + SAE encode/decode +
reconstruction statistics + SAE-spliced and zero-spliced continuations + CE/KL sums
(``randsae.metrics.evaluate_batch``). Baseline = ``model(input_ids).logits`` on the same tokens.
Goal: full evaluation <= 2.5x the bare forward.

The model is a small Llama built from config (no download); the SAE a random TopK SAE. Timings
alternate between the two measurements and report the median, so drift from other processes on
the machine hits both alike.

    python benchmarks/metrics_bench.py [--vocab 49152] [--batch 8] [--ctx 256] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from randsae.metrics import DownstreamStats, ReconstructionStats, evaluate_batch


class RandomTopK(nn.Module):
    """Random TopK SAE (encode/decode as the trainer's SAE does)."""

    def __init__(self, d: int, n_latents: int, k: int) -> None:
        super().__init__()
        self.n_latents, self.k = n_latents, k
        self.w_enc = nn.Parameter(torch.randn(d, n_latents) / d**0.5)
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.w_dec = nn.Parameter(torch.randn(n_latents, d) / d**0.5)
        self.b_dec = nn.Parameter(torch.zeros(d))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.relu((x - self.b_dec) @ self.w_enc + self.b_enc).topk(self.k, dim=-1)

    def decode(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return (
            F.embedding_bag(indices, self.w_dec, per_sample_weights=values, mode="sum") + self.b_dec
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=49152, help="SmolLM2's vocabulary size by default")
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    ap.add_argument(
        "--no-single-zero", action="store_true", help="run the zero branch for every sequence"
    )
    ap.add_argument(
        "--skip-first-position", action="store_true",
        help="as the stage with drop_first_position (its default): position 0 clean in both branches, "
        "so the zero branch runs for every sequence",
    )  # fmt: skip
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=max(args.ctx, 2048),
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    sae = RandomTopK(args.hidden, args.expansion * args.hidden, args.k)
    ids = torch.randint(0, args.vocab, (args.batch, args.ctx))

    def bare() -> None:
        with torch.no_grad():
            _ = model(input_ids=ids, use_cache=False).logits

    def full() -> None:
        evaluate_batch(
            model, sae, ids, args.layer, sae.n_latents, DownstreamStats(), ReconstructionStats(),
            single_zero_sequence=not args.no_single_zero, skip_first_position=args.skip_first_position,
        )  # fmt: skip

    bare(), full()  # warm up
    # Wall time and process CPU time (all threads). On a shared machine the CPU time is the
    # steadier of the two: it does not count time spent waiting for a core.
    times: dict[str, dict[str, list[float]]] = {
        name: {"wall": [], "cpu": []} for name in ("bare", "full")
    }
    for _ in range(args.repeats):
        for name, fn in (("bare", bare), ("full", full)):
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name]["cpu"].append(time.process_time() - c0)
            times[name]["wall"].append(time.perf_counter() - w0)
    n_tok = args.batch * args.ctx
    print(
        f"llama layers={args.layers} hidden={args.hidden} ffn={args.intermediate} vocab={args.vocab} "
        f"layer={args.layer}; SAE {args.expansion}x k={args.k}; {args.batch}x{args.ctx} = {n_tok} tokens; "
        f"threads={torch.get_num_threads()} single_zero_sequence={not args.no_single_zero} "
        f"skip_first_position={args.skip_first_position} "
        f"repeats={args.repeats}"
    )
    for clock in ("wall", "cpu"):
        for name in ("bare", "full"):
            ts = times[name][clock]
            print(
                f"{clock:4s} {name:4s}: min {min(ts) * 1e3:8.1f} ms  median {statistics.median(ts) * 1e3:8.1f} ms"
                f"  ({n_tok / min(ts):,.0f} tok/s at min)"
            )
        ratio_min = min(times["full"][clock]) / min(times["bare"][clock])
        ratio_med = statistics.median(times["full"][clock]) / statistics.median(
            times["bare"][clock]
        )
        print(
            f"{clock:4s} ratio full/bare: {ratio_min:.2f}x (min)  {ratio_med:.2f}x (median)  goal <= 2.5x"
        )


if __name__ == "__main__":
    main()
