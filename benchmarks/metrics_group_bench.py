"""Metrics cost of N SAEs of one hookpoint sharing one pass against N separate evaluations.

Shared = ``randsae.metrics.evaluate_batch_group`` with N SAEs (what one ``sae_metrics`` job
does per batch: prefix, clean and zero branch once, then each SAE's encode/decode, spliced
branch, CE/KL reduction and statistics). Separate = N calls of ``evaluate_batch``, one SAE
each (what N single-SAE jobs did per batch). Model loading and token reading, which a shared
job also pays once instead of N times, are not counted. The script also checks that every
SAE's statistics are bit for bit the same both ways.

Same model as benchmarks/metrics_bench.py (a Llama from config, no download) and random TopK
SAEs; by default position 0 is treated as the stage does with ``drop_first_position`` (its
default): kept clean in both replaced branches, so the zero branch runs once per batch.
Measurements alternate and the medians are reported.

    python benchmarks/metrics_group_bench.py [--n 1 3 5] [--repeats 3] [--no-skip-first-position]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch
from metrics_bench import RandomTopK  # run as a script: benchmarks/ is on the path
from transformers import LlamaConfig, LlamaForCausalLM

from randsae.metrics import (
    DownstreamStats,
    ReconstructionStats,
    SaeEval,
    evaluate_batch,
    evaluate_batch_group,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1, 3, 5], help="SAEs per hookpoint")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    ap.add_argument("--no-skip-first-position", action="store_true",
                    help="replace position 0 too: the zero branch is then one cached sequence")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    skip = not args.no_skip_first_position

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=max(args.ctx, 2048),
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    saes = [RandomTopK(args.hidden, args.expansion * args.hidden, args.k) for _ in range(max(args.n))]
    ids = torch.randint(0, args.vocab, (args.batch, args.ctx))

    def fresh(n: int) -> list[SaeEval]:
        return [SaeEval(s, s.n_latents, DownstreamStats(), ReconstructionStats()) for s in saes[:n]]

    def separate(n: int) -> list[SaeEval]:
        out = fresh(n)
        for one in out:  # each as its own job: its own zero cache
            evaluate_batch(model, one.sae, ids, args.layer, one.n_latents, one.downstream, one.recon,
                           skip_first_position=skip, zero_cache={})
        return out

    def shared(n: int) -> list[SaeEval]:
        out = fresh(n)
        evaluate_batch_group(model, out, ids, args.layer, skip_first_position=skip, zero_cache={})
        return out

    def timed(fn: Callable[[int], list[SaeEval]], n: int) -> tuple[float, list[SaeEval]]:
        c0 = time.process_time()
        got = fn(n)
        return time.process_time() - c0, got

    with torch.no_grad():
        shared(1)  # warm up
        print(
            f"llama layers={args.layers} hidden={args.hidden} vocab={args.vocab} layer={args.layer}; "
            f"SAEs {args.expansion}x k={args.k}; {args.batch}x{args.ctx} tokens per batch; "
            f"threads={torch.get_num_threads()} skip_first_position={skip} repeats={args.repeats}; CPU time"
        )
        one_alone = None
        for n in args.n:
            times: dict[str, list[float]] = {"separate": [], "shared": []}
            results: dict[str, list[SaeEval]] = {}
            for _ in range(args.repeats):
                for name, fn in (("separate", separate), ("shared", shared)):
                    t, results[name] = timed(fn, n)
                    times[name].append(t)
            same = all(
                dataclasses.astuple(a.downstream) == dataclasses.astuple(b.downstream)
                and a.recon is not None and b.recon is not None
                and a.recon.sse == b.recon.sse and torch.equal(a.recon.firing_counts, b.recon.firing_counts)
                for a, b in zip(results["separate"], results["shared"], strict=True)
            )  # fmt: skip
            sep, sha = statistics.median(times["separate"]), statistics.median(times["shared"])
            if one_alone is None and n == 1:
                one_alone = sep
            extra = f"  per extra SAE {(sha - one_alone) / (n - 1) * 1e3:7.0f} ms" if one_alone and n > 1 else ""
            print(f"N={n}: separate {sep * 1e3:8.0f} ms  shared {sha * 1e3:8.0f} ms  "
                  f"shared/separate {sha / sep:.2f}x{extra}  bitwise equal: {same}")


if __name__ == "__main__":
    main()
