"""Streamed SAE training against the sum of its parts, and against training on cached activations.

    python benchmarks/stream_bench.py [--model-dir DIR] [--tokens N] [--layers 3 9] [--seeds 2] [--repeats 2]

One group (every hooked layer x seed, one (expansion, k)) of one model variant, in this one
process, same model, tokens, threads and SAE configs, each measure after the model load:

  bare forward  forward.hidden_batches over the train split stopped after the deepest layer
                (in the streamed pass's sequence order and batch size), outputs discarded
  SAE steps     train_parts over in-memory streams of the same rows (no source cost: the
                trainer's steps, data order and checkpoints alone)
  streamed      what a streaming sae job runs: ForwardWindows + ForwardStream per layer +
                train_parts (randsae.stages.sae._train_pass)
  cached        what a caching config runs: write_activations (the activations job), then
                train_parts over ActivationStream per layer (the sae job); both, and each

Reported: tokens/s of the group (train tokens / wall time) and streamed's throughput relative
to (bare forward + SAE steps); goal >= 0.85. Measures alternate over --repeats; medians.
Without --model-dir the packaged SmolLM2-135M is converted once into a temp dir
(benchmarks/activations_bench.py's helpers).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from randsae import activation_cache, forward, zarr_io
from randsae.models.artifact import load_model_artifact
from randsae.sae.config import SaeConfig
from randsae.sae.data import ActivationStream, WindowedStream
from randsae.sae.stream import ForwardWindows
from randsae.sae.trainer import TrainPart, train_parts
from randsae.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parent))
from activations_bench import model_artifact, tokens_artifact  # noqa: E402


class MemoryStream(WindowedStream):
    """The data order over rows already in memory: the trainer's input with no source cost."""

    def __init__(self, rows: torch.Tensor, rows_per_seq: int, **order: Any) -> None:
        self.rows = rows
        super().__init__("memory", n_tokens=rows.shape[0], d_model=rows.shape[1], rows_per_seq=rows_per_seq,
                         logical_dtype="bfloat16", prefetch=False, **order)

    def _read_window(self, key):
        return torch.cat([self.rows[slice(*self.block_span(int(b)))] for b in self.window_blocks(key)])

    def _rows_of(self, raw):
        return raw


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", type=Path)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--ctx-len", type=int, default=256)
    ap.add_argument("--forward-batch-size", type=int, default=8)
    ap.add_argument("--layers", type=int, nargs="+", default=[3, 9])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=1024, help="SAE tokens per step")
    ap.add_argument("--block-sequences", type=int, default=4)
    ap.add_argument("--buffer-tokens", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    order = {"batch_size": args.batch_size, "shuffle_buffer_tokens": args.buffer_tokens,
             "shuffle_block_sequences": args.block_sequences, "data_seed": 0, "max_tokens": None}
    cfgs = [SaeConfig(expansion_factor=args.expansion, k=args.k, seed=s, warmup_steps=2, checkpoint_every_steps=10**9,
                      **order) for s in range(args.seeds)]
    dev = torch.device("cpu")
    times: dict[str, list[float]] = {m: [] for m in ("bare", "steps", "streamed", "cache_write", "cached_train")}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = Store(root / "store")
        model_ref = model_artifact(store, args.model_dir)
        loaded = load_model_artifact(store.root / model_ref, dtype=torch.float32, device=dev)
        tokens_dir = store.root / tokens_artifact(store, args.tokens, args.ctx_len, loaded.tokenizer)

        def windows() -> ForwardWindows:
            return ForwardWindows(loaded, tokens_dir, args.layers, dtype="bfloat16", drop_first_position=True,
                                  forward_batch_size=args.forward_batch_size, device=dev, label="bench")

        def parts(streams: dict[int, WindowedStream], out: Path) -> list[TrainPart]:
            return [TrainPart(s, [out / f"L{layer}s{c.seed}" for c in cfgs], cfgs) for layer, s in streams.items()]

        w0 = windows()
        probe = w0.stream(args.layers[0], **order)
        seq_order = [probe.window_sequences((0, w)) for w in range(probe.n_windows)]
        n_rows = probe.n_tokens
        for _ in forward.hidden_batches(loaded, tokens_dir, seq_order[0][:2], args.layers, 2, dev):  # warm-up
            pass
        for rep in range(args.repeats):  # alternate the measures so drift hits all alike
            t = time.perf_counter()
            for seqs in seq_order:
                for _ in forward.hidden_batches(loaded, tokens_dir, seqs, args.layers, args.forward_batch_size, dev):
                    pass
            times["bare"].append(time.perf_counter() - t)

            cache_dirs = {layer: root / f"acts{rep}" / f"L{layer}" for layer in args.layers}
            for d in cache_dirs.values():
                d.mkdir(parents=True)
            targets = [activation_cache.LayerTarget(la, d, "bfloat16") for la, d in cache_dirs.items()]
            t = time.perf_counter()
            activation_cache.write_activations(targets, store.root / model_ref, tokens_dir, "float32", True,
                                               args.forward_batch_size, 16384, dev, desc="bench activations")
            times["cache_write"].append(time.perf_counter() - t)
            acts = {la: d / "acts.zarr" for la, d in cache_dirs.items()}

            mem = {la: MemoryStream(zarr_io.read_rows(zarr_io.open_array(p), 0, None), probe.rows_per_seq, **order)
                   for la, p in acts.items()}
            t = time.perf_counter()
            train_parts(parts(mem, root / f"steps{rep}"), root / f"ck_steps{rep}", device=dev, progress=False)
            times["steps"].append(time.perf_counter() - t)

            w = windows()
            t = time.perf_counter()
            train_parts(parts({la: w.stream(la, **order) for la in args.layers}, root / f"streamed{rep}"),
                        root / f"ck_streamed{rep}", device=dev, progress=False)
            times["streamed"].append(time.perf_counter() - t)

            streams = {la: ActivationStream(p, **order) for la, p in acts.items()}
            t = time.perf_counter()
            train_parts(parts(streams, root / f"cached{rep}"), root / f"ck_cached{rep}", device=dev, progress=False)
            times["cached_train"].append(time.perf_counter() - t)
            for s in streams.values():
                s.close()
            same = all((root / f"streamed{rep}" / n / "sae.safetensors").read_bytes()
                       == (root / f"cached{rep}" / n / "sae.safetensors").read_bytes()
                       for n in (f"L{la}s{c.seed}" for la in args.layers for c in cfgs))
            print(f"repeat {rep}: " + ", ".join(f"{m} {v[-1]:.2f} s" for m, v in times.items())
                  + f"; streamed == cached SAE bytes: {same}", flush=True)

    med = {m: statistics.median(v) for m, v in times.items()}
    parts_sum = med["bare"] + med["steps"]
    cached_total = med["cache_write"] + med["cached_train"]
    n_saes = len(args.layers) * args.seeds

    def tps(seconds: float) -> str:
        return f"{n_rows / seconds:,.0f}"

    print(f"\nmodel layers {args.layers} of {loaded.model.config.num_hidden_layers} (d_model {probe.d_model}), "
          f"{n_rows} train rows, {n_saes} SAEs (x{args.expansion} k{args.k}, batch {args.batch_size}), "
          f"torch threads {torch.get_num_threads()}, {args.repeats} alternating repeats (medians)")
    print("| measure | seconds | group tokens/s | ratio |")
    print("|---|---|---|---|")
    print(f"| bare forward to layer {max(args.layers)} | {med['bare']:.2f} | {tps(med['bare'])} | |")
    print(f"| SAE steps alone ({n_saes} SAEs) | {med['steps']:.2f} | {tps(med['steps'])} | |")
    print(f"| sum of the parts | {parts_sum:.2f} | {tps(parts_sum)} | 1.00 |")
    print(f"| streamed group | {med['streamed']:.2f} | {tps(med['streamed'])} | "
          f"**{parts_sum / med['streamed']:.2f}** of the parts (goal >= 0.85) |")
    print(f"| cached: write activations + train | {cached_total:.2f} | {tps(cached_total)} | "
          f"{med['streamed'] / cached_total:.2f} streamed time / cached time |")
    print(f"| cached: train alone (activations already cached) | {med['cached_train']:.2f} | "
          f"{tps(med['cached_train'])} | {med['streamed'] / med['cached_train']:.2f} streamed / cached train |")


if __name__ == "__main__":
    sys.exit(main())
