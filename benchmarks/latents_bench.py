"""Latent caching throughput against the bare forward + SAE encode, and its peak memory at two
token counts (it must stay flat: the cache is written in bounded chunks and the index sorted in
bounded buckets).

Baseline = ``run_to_layers`` to the SAE's layer + ``TopKSAE.encode`` on the same batches, results
discarded (no I/O). Model and SAE loading is excluded from both. Stage = :func:`randsae.latents.build_latent_cache`: the same work plus
fp16 conversion, Zarr writes, the statistics pass and the latent-major index. Each measurement
runs in its own subprocess, so its peak RSS (``ru_maxrss``) is its own.

The model is a small Llama built from config with a word-level tokenizer (no download), the
tokens uniformly random, the SAE a randomly initialised TopK SAE.

    python benchmarks/latents_bench.py [--tokens 32768 131072] [--hidden 256] [--expansion 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_model(out: Path, hidden: int, layers: int, vocab: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                      num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, max_position_embeddings=1024)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="t1", unk_token="t0").save_pretrained(out)
    (out / "variant.json").write_text(json.dumps({"variant": "trained", "seed": 0}))


def make_tokens(out: Path, n_tokens: int, ctx: int, vocab: int) -> None:
    from randsae import zarr_io

    rng = np.random.default_rng(0)
    n_seq = n_tokens // ctx
    out.mkdir(parents=True)
    zarr_io.create_array(out / "tokens.zarr", (n_seq, ctx), (64, ctx), "int32")[:] = rng.integers(2, vocab, (n_seq, ctx), dtype=np.int32)
    doc = np.zeros((n_seq, ctx), np.uint8)
    doc[:, 0] = 1
    zarr_io.create_array(out / "doc_start.zarr", (n_seq, ctx), (64, ctx), "uint8")[:] = doc


def make_sae(out: Path, hidden: int, expansion: int, k: int, layer: int) -> None:
    from randsae.sae import TopKSAE

    TopKSAE.initialised(hidden, hidden * expansion, k, seed=0).save(out)
    info = {"layer": layer, "drop_first_position": True, "activations_dtype": "bfloat16"}
    (out / "meta.json").write_text(json.dumps({"info": info}))


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_baseline(root: Path, tokens_dir: Path, batch: int) -> dict:
    from randsae import zarr_io
    from randsae.forward import run_to_layers
    from randsae.latents import resolve_hookpoint
    from randsae.models.artifact import load_model_artifact
    from randsae.sae import TopKSAE

    hook = resolve_hookpoint(root / "sae", root)
    model = load_model_artifact(root / "model").model
    sae = TopKSAE.load(root / "sae")
    tokens = zarr_io.open_array(tokens_dir / "tokens.zarr")
    t0 = time.perf_counter()
    for b0 in range(0, tokens.shape[0], batch):
        ids = torch.from_numpy(np.asarray(tokens[b0 : b0 + batch])).long()
        hidden = run_to_layers(model, ids, [hook.layer])[hook.layer]
        with torch.inference_mode():
            sae.encode(hidden.reshape(-1, hidden.shape[-1]))
    return {"seconds": time.perf_counter() - t0, "n_tokens": tokens.shape[0] * tokens.shape[1]}


def worker_stage(root: Path, tokens_dir: Path, batch: int, chunk: int) -> dict:
    import randsae.models.artifact  # noqa: F401  (the stage imports it lazily: keep imports out of the timing)
    import randsae.sae  # noqa: F401
    from randsae.latents import CacheSettings, build_latent_cache, resolve_hookpoint

    hook = resolve_hookpoint(root / "sae", root)
    with tempfile.TemporaryDirectory(dir=root) as work:
        t0 = time.perf_counter()
        info = build_latent_cache(Path(work), root / "model", root / "sae", tokens_dir, hook, "float32",
                                  CacheSettings(batch_size=batch, chunk_tokens=chunk, device="cpu"), desc="bench")
        seconds = time.perf_counter() - t0
    load = info["seconds_load"]
    return {"seconds": seconds - load, "n_tokens": info["n_rows"], "seconds_encode": info["seconds_encode"] - load,
            "seconds_index": info["seconds_index"], "stored_bytes": info["stored_bytes"], "n_entries": info["n_entries"]}


def run_worker(args: argparse.Namespace, mode: str, n_tokens: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--root", str(args.root), "--n", str(n_tokens),
           "--batch", str(args.batch), "--chunk", str(args.chunk), "--threads", str(args.threads)]
    env = {**os.environ, "TQDM_DISABLE": "1"}  # both workers run on the CPU
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs=2, default=[32768, 131072], help="two token counts")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--layer", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--expansion", type=int, default=16)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=16384, help="tokens per resumable chunk")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker", choices=["baseline", "stage"], help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        torch.set_num_threads(args.threads)
        tokens_dir = args.root / f"tokens-{args.n}"
        res = worker_baseline(args.root, tokens_dir, args.batch) if args.worker == "baseline" else \
            worker_stage(args.root, tokens_dir, args.batch, args.chunk)
        print(json.dumps({**res, "maxrss_mib": maxrss_mib()}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        args.root = Path(tmp)
        make_model(args.root / "model", args.hidden, args.layers, args.vocab)
        make_sae(args.root / "sae", args.hidden, args.expansion, args.k, args.layer)
        for n in args.tokens:
            make_tokens(args.root / f"tokens-{n}", n, args.ctx, args.vocab)
        print(f"model d={args.hidden} layers={args.layers} (hook after block {args.layer}), SAE {args.hidden * args.expansion} "
              f"latents k={args.k}, ctx {args.ctx}, batch {args.batch}, chunk {args.chunk} tokens, {args.threads} threads")
        print(f"{'tokens':>8} {'mode':>9} {'tok/s':>8} {'seconds':>8} {'encode s':>8} {'index s':>8} {'maxrss MiB':>10}")
        for n in args.tokens:
            runs: dict[str, list[dict]] = {"baseline": [], "stage": []}
            for _ in range(args.repeats):  # alternate, so load from other processes hits both alike
                for mode in runs:
                    runs[mode].append(run_worker(args, mode, n))
            for mode, rs in runs.items():
                med = {key: statistics.median(r.get(key, float("nan")) for r in rs)
                       for key in ("seconds", "seconds_encode", "seconds_index")}
                print(f"{n:>8} {mode:>9} {n / med['seconds']:>8.0f} {med['seconds']:>8.2f} {med['seconds_encode']:>8.2f} "
                      f"{med['seconds_index']:>8.2f} {max(r['maxrss_mib'] for r in rs):>10.0f}")
        print("seconds: median, model/SAE loading excluded; stage = encode loop + fp16/sort + Zarr writes + "
              "statistics pass + index; maxrss: peak resident set of the worker process")


if __name__ == "__main__":
    main()
