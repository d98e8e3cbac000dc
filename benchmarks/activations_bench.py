"""Activation caching throughput against a bare forward, and Zarr read throughput.

    python benchmarks/activations_bench.py [--model-dir DIR] [--tokens N] [--layers 3 9]

Both timings run in this one process on the same model, tokens, batch and dtype:
  bare     run_to_layers (forward stopped after the deepest layer), outputs discarded
  caching  the activations stage's build_group into a fresh store (forward + bf16
           conversion + compressed Zarr writes + progress bookkeeping)
Then one layer's array is read back in training-sized blocks (Zarr read tokens/s).
Without --model-dir the packaged SmolLM2-135M is converted once into a temp dir.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from randsae import zarr_io
from randsae.activations import run_to_layers
from randsae.models.artifact import build_model, load_model_artifact, save_model_artifact
from randsae.plan import STAGE_VERSIONS
from randsae.stages.activations import build_group
from randsae.store import Store


def model_artifact(store: Store, model_dir: Path | None) -> str:
    spec = {"stage": "model", "version": STAGE_VERSIONS["model"], "key": "0" * 20, "name": "model/bench/trained", "params": {}, "inputs": {}}
    with store.publish(spec) as b:
        if model_dir is not None:
            shutil.copytree(model_dir, b.workdir, dirs_exist_ok=True)
        else:
            model, tok, info = build_model({"kind": "packaged", "name": "smollm2-135m"}, "trained", 0)
            save_model_artifact(model, tok, info, b.workdir)
    return "model/" + "0" * 20


def tokens_artifact(store: Store, n_tokens: int, ctx_len: int, vocab: int) -> str:
    spec = {"stage": "tokens", "version": STAGE_VERSIONS["tokens"], "key": "1" * 20, "name": "tokens/bench", "params": {}, "inputs": {}}
    ids = np.random.default_rng(0).integers(0, vocab, size=(n_tokens // ctx_len, ctx_len), dtype=np.int32)
    with store.publish(spec) as b:
        zarr_io.create_array(b.workdir / "tokens.zarr", ids.shape, ids.shape, "int32")[:] = ids
    return "tokens/" + "1" * 20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", type=Path)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--ctx-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--layers", type=int, nargs="+", default=[3, 9])
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        model_ref = model_artifact(store, args.model_dir)
        loaded = load_model_artifact(store.root / model_ref, dtype=zarr_io.torch_dtype(args.dtype))
        tokens_ref = tokens_artifact(store, args.tokens, args.ctx_len, loaded.model.config.vocab_size)
        ids = torch.from_numpy(zarr_io.open_array(store.root / tokens_ref / "tokens.zarr")[:]).long()
        run_to_layers(loaded.model, ids[: args.batch_size], args.layers)  # warm-up
        t = time.perf_counter()
        for b0 in range(0, ids.shape[0], args.batch_size):
            run_to_layers(loaded.model, ids[b0 : b0 + args.batch_size], args.layers)
        bare = time.perf_counter() - t
        specs = [
            {"stage": "activations", "version": STAGE_VERSIONS["activations"], "key": f"{layer:020d}", "name": f"activations/bench/L{layer}",
             "params": {"layer": layer, "dtype": "bfloat16", "model_dtype": args.dtype, "drop_first_position": True},
             "inputs": {"model": model_ref, "tokens": tokens_ref}}
            for layer in args.layers
        ]
        t = time.perf_counter()
        build_group(specs, store, batch_size=args.batch_size, chunk_tokens=16384)
        caching = time.perf_counter() - t
        meta = store.meta("activations", specs[0]["key"])["info"]
        arr = zarr_io.open_array(store.path("activations", specs[0]["key"]) / "acts.zarr")
        t = time.perf_counter()
        for r0 in range(0, arr.shape[0], 4096):
            zarr_io.read_rows(arr, r0, r0 + 4096).float()
        read = time.perf_counter() - t
    n = ids.numel()
    print(f"model layers {args.layers} of {loaded.model.config.num_hidden_layers}, {n} tokens, batch {args.batch_size}x{args.ctx_len}, {args.dtype}, torch threads {torch.get_num_threads()}")
    print("| measure | tokens/s | ratio |")
    print("|---|---|---|")
    print(f"| bare forward to layer {max(args.layers)} | {n / bare:,.0f} | 1.00 |")
    print(f"| activation caching ({len(args.layers)} layers, bf16 Zarr) | {n / caching:,.0f} | {bare / caching:.2f} |")
    print(f"| Zarr read of one layer (4096-row blocks, to fp32) | {arr.shape[0] / read:,.0f} | |")
    print(f"compression (one layer): {meta['raw_bytes'] / meta['stored_bytes']:.2f}x ({meta['raw_bytes']:,} -> {meta['stored_bytes']:,} bytes)")


if __name__ == "__main__":
    sys.exit(main())
