"""Activation caching throughput against a bare forward, and Zarr read throughput.

    python benchmarks/activations_bench.py [--model-dir DIR] [--tokens N] [--layers 3 9] [--codecs]

Both timings run in this one process on the same model, tokens, batch and dtype:
  bare     run_to_layers (forward stopped after the deepest layer), outputs discarded
  caching  the activations stage's build_group into a fresh store (forward + bf16
           conversion + compressed Zarr writes + progress bookkeeping), timed by the
           stage's own clock (after the model load), and end to end including the load
Then one layer's array is read back in training-sized blocks (Zarr read tokens/s).
Without --model-dir the packaged SmolLM2-135M is converted once into a temp dir.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr
from zarr.codecs import BloscCodec

from randsae import zarr_io
from randsae.corpus import CorpusStats, iter_documents
from randsae.forward import run_to_layers
from randsae.models.artifact import build_model, load_model_artifact, save_model_artifact
from randsae.packing import pack
from randsae.stages import build_group, stage_def
from randsae.store import Store


def model_artifact(store: Store, model_dir: Path | None) -> str:
    spec = {"stage": "model", "version": stage_def("model").version, "key": "0" * 20, "name": "model/bench/trained", "params": {}, "inputs": {}}
    with store.publish(spec) as b:
        if model_dir is not None:
            shutil.copytree(model_dir, b.workdir, dirs_exist_ok=True)
        else:
            model, tok, info = build_model({"kind": "packaged", "name": "smollm2-135m"}, "trained", 0)
            save_model_artifact(model, tok, info, b.workdir)
    return "model/" + "0" * 20


def tokens_artifact(store: Store, n_tokens: int, ctx_len: int, tokenizer) -> str:
    """Packed sequences of real English text (the packaged KJV corpus): compression ratios of
    activations on random token ids say nothing about real ones."""
    spec = {"stage": "tokens", "version": stage_def("tokens").version, "key": "1" * 20, "name": "tokens/bench", "params": {}, "inputs": {}}
    docs = iter_documents({"kind": "packaged", "name": "kjv"}, shuffle_seed=0, shuffle_buffer=None,
                          max_doc_chars=100_000, stats=CorpusStats())
    ids = pack((tokenizer(d)["input_ids"] for d in docs), n_tokens // ctx_len, ctx_len, tokenizer.eos_token_id).tokens
    with store.publish(spec) as b:
        zarr_io.create_array(b.workdir / "tokens.zarr", ids.shape, ids.shape, "int32")[:] = ids
    return "tokens/" + "1" * 20


CODECS = [("zstd", 3, "bitshuffle"), ("zstd", 1, "shuffle"), ("lz4", 5, "shuffle"), ("lz4", 5, "bitshuffle")]


def compare_codecs(chunk: np.ndarray) -> list[str]:
    """Ratio and write/read time of one stored chunk under a few Blosc settings."""
    rows = ["| codec | ratio | write ms | read ms |", "|---|---|---|---|"]
    for cname, clevel, shuffle in CODECS:
        with tempfile.TemporaryDirectory() as d:
            a = zarr.create_array(store=d, shape=chunk.shape, chunks=chunk.shape, dtype=chunk.dtype,
                                  compressors=[BloscCodec(cname=cname, clevel=clevel, shuffle=shuffle)])
            t = time.perf_counter()
            a[:] = chunk
            w = time.perf_counter() - t
            t = time.perf_counter()
            a[:]
            r = time.perf_counter() - t
            rows.append(f"| {cname}-{clevel} {shuffle} | {a.nbytes / a.nbytes_stored():.2f}x | {w * 1e3:.0f} | {r * 1e3:.0f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", type=Path)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--ctx-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--layers", type=int, nargs="+", default=[3, 9])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=3, help="alternating bare/caching runs; medians reported")
    ap.add_argument("--codecs", action="store_true", help="also compare Blosc codecs on the first stored chunk")
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        model_ref = model_artifact(store, args.model_dir)
        loaded = load_model_artifact(store.root / model_ref, dtype=zarr_io.torch_dtype(args.dtype))
        tokens_ref = tokens_artifact(store, args.tokens, args.ctx_len, loaded.tokenizer)
        ids = torch.from_numpy(zarr_io.open_array(store.root / tokens_ref / "tokens.zarr")[:]).long()
        run_to_layers(loaded.model, ids[: args.batch_size], args.layers)  # warm-up
        bare, caching, caching_total = [], [], []
        for rep in range(args.repeats):  # alternate the two so drift hits both alike
            t = time.perf_counter()
            for b0 in range(0, ids.shape[0], args.batch_size):
                run_to_layers(loaded.model, ids[b0 : b0 + args.batch_size], args.layers)
            bare.append(time.perf_counter() - t)
            specs = [
                {"stage": "activations", "version": stage_def("activations").version, "key": f"{rep}{layer:019d}",
                 "name": f"activations/bench/L{layer}",
                 "params": {"layer": layer, "dtype": "bfloat16", "model_dtype": args.dtype, "drop_first_position": True},
                 "inputs": {"model": model_ref, "tokens": tokens_ref}}
                for layer in args.layers
            ]
            t = time.perf_counter()
            build_group(specs, store, {"batch_size": args.batch_size, "chunk_tokens": 16384, "device": "cpu"})  # as the bare forward
            caching_total.append(time.perf_counter() - t)
            meta = store.meta("activations", specs[0]["key"])["info"]
            caching.append(meta["seconds"])  # the stage's own clock: forward + writes, after the model load
        arr = zarr_io.open_array(store.path("activations", specs[0]["key"]) / "acts.zarr")
        t = time.perf_counter()
        for r0 in range(0, arr.shape[0], 4096):
            zarr_io.read_rows(arr, r0, r0 + 4096).float()
        read = time.perf_counter() - t
        codec_rows = compare_codecs(np.asarray(arr[: arr.chunks[0]])) if args.codecs else []
    n = ids.numel()

    def row(name: str, times: list[float]) -> str:
        ratios = sorted(b / c for b, c in zip(bare, times))
        spread = f" ({ratios[0]:.2f}-{ratios[-1]:.2f})" if len(ratios) > 1 else ""
        return f"| {name} | {n / statistics.median(times):,.0f} | {statistics.median(ratios):.2f}{spread} |"

    print(f"model layers {args.layers} of {loaded.model.config.num_hidden_layers}, {n} tokens, batch {args.batch_size}x{args.ctx_len}, "
          f"{args.dtype}, torch threads {torch.get_num_threads()}, {args.repeats} alternating repeats (medians)")
    print("| measure | tokens/s | ratio to bare (range) |")
    print("|---|---|---|")
    print(f"| bare forward to layer {max(args.layers)} | {n / statistics.median(bare):,.0f} | 1.00 |")
    print(row(f"activation caching ({len(args.layers)} layers, bf16 Zarr)", caching))
    print(row("same, including model load and publish", caching_total))
    print(f"| Zarr read of one layer (4096-row blocks, to fp32) | {arr.shape[0] / read:,.0f} | |")
    for line in codec_rows:
        print(line)
    print(f"compression (one layer): {meta['raw_bytes'] / meta['stored_bytes']:.2f}x ({meta['raw_bytes']:,} -> {meta['stored_bytes']:,} bytes)")


if __name__ == "__main__":
    sys.exit(main())
