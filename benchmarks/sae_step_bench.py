"""CPU benchmark: one TopK SAE update step against the encoder matmul alone (and sparsify).

Goal (issue 4): on the CPU at d=576, 9216 latents, k=32, batch 4096, in float32 and bfloat16, one
full update step (forward, backward, Adam, decoder normalisation) costs at most 1.3x the encoder
matmul alone at the same shapes.

Measured, interleaved round-robin so load changes on a shared machine hit all candidates alike
(minimum and median over the repeats are reported):

* ``matmul``      ``x @ W_enc.T`` as one would write it (allocates the [N, L] result);
* ``matmul_out``  the same into a preallocated output (no page faults for a fresh 150 MB buffer);
* ``randsae``     one trainer step (``randsae.sae.trainer._train_batch``): encoder, top-k,
                  sparse decode, loss, hand-written sparse backward, decoder-parallel gradient
                  removal, clipping, fused Adam, decoder renormalisation, dead counters;
* ``sparsify``    (if eai-sparsify is installed) its SparseCoder forward + fvu loss, backward,
                  parallel-gradient removal, clipping, torch Adam, decoder renormalisation on the
                  same tensors and the same initial weights (bf16: CPU autocast).

Then, unless ``--fvu-steps 0``: both trainers run the same number of steps on the same synthetic
data (sparse non-negative combinations of random directions plus noise, stored as bf16 Zarr),
same batches in the same order, same initial weights, same lr schedule, AuxK off (sparsify's
default), and report held-out FVU and training tokens/s.

    python benchmarks/sae_step_bench.py [--repeats 9] [--fvu-steps 30] [--threads 1 --cpu-time]

On the CPU sparsify needs SPARSIFY_DISABLE_TRITON=1 when triton is installed; the script sets it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

import torch  # noqa: E402

from randsae import zarr_io  # noqa: E402
from randsae.sae import SaeConfig, TopKSAE, train_sae  # noqa: E402
from randsae.sae import trainer as T  # noqa: E402
from randsae.sae.data import ActivationStream  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _sparsify():
    try:
        from sparsify import SparseCoder, SparseCoderConfig
    except ImportError:
        return None
    return SparseCoder, SparseCoderConfig


# -- step timing ----------------------------------------------------------------------------------


def _sparsify_model(d: int, latents: int, k: int, init: TopKSAE):
    SparseCoder, SparseCoderConfig = _sparsify()
    sae = SparseCoder(d, SparseCoderConfig(num_latents=latents, k=k), device="cpu")
    with torch.no_grad():
        sae.encoder.weight.copy_(init.W_enc)
        sae.encoder.bias.copy_(init.b_enc)
        sae.W_dec.copy_(init.W_dec)
        sae.b_dec.copy_(init.b_dec)
    return sae


def _sparsify_step(sae, opt, x: torch.Tensor, dtype: str, lr: float) -> torch.Tensor:
    """One sparsify-style update (its Trainer's fvu path, plus the same clipping as ours)."""
    for g in opt.param_groups:
        g["lr"] = lr
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
        out = sae(x)
    out.fvu.backward()
    sae.remove_gradient_parallel_to_decoder_directions()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
    sae.set_decoder_norm_to_unit_norm()
    return out.fvu.detach()


def time_steps(args: argparse.Namespace, dtype: str) -> dict[str, Any]:
    d, latents, k, n = args.d, args.latents, args.k, args.batch
    cdt = DTYPES[dtype]
    cfg = SaeConfig(expansion_factor=latents // d, k=k, dtype=dtype, auxk_coef=0.0)
    member = T._new_member(cfg, Path("unused"), d, None, torch.device("cpu"))
    prog = T._Progress(planned_steps=10**6)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen).to(torch.bfloat16)  # activations are stored as bf16
    x32 = x.float()
    x_c = x.to(cdt)
    W = member.model.W_enc.detach().to(cdt).contiguous()
    out = torch.empty(n, latents, dtype=cdt)
    cands: dict[str, Callable[[], Any]] = {
        "matmul": lambda: x_c @ W.T,
        "matmul_out": lambda: torch.mm(x_c, W.T, out=out),
        "randsae": lambda: T._train_batch([member], prog, x),
    }
    if _sparsify() is not None and not args.no_sparsify:
        init = TopKSAE.initialised(d, latents, k, seed=0)
        sp = _sparsify_model(d, latents, k, init)
        sp_opt = torch.optim.Adam(sp.parameters(), lr=1e-4)
        cands["sparsify"] = lambda: _sparsify_step(sp, sp_opt, x32, dtype, 1e-4)
    for f in cands.values():  # warm up: allocator, oneDNN primitives, workspaces
        f()
        f()
    clock = time.process_time if args.cpu_time else time.perf_counter
    times: dict[str, list[float]] = {name: [] for name in cands}
    for _ in range(args.repeats):
        for name, f in cands.items():
            t0 = clock()
            f()
            times[name].append(clock() - t0)
    res: dict[str, Any] = {
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "clock": "process CPU time" if args.cpu_time else "wall clock",
    }
    for name, ts in times.items():
        res[name] = {
            "min_ms": 1e3 * min(ts),
            "median_ms": 1e3 * statistics.median(ts),
            "tokens_per_s": n / min(ts),
        }
    for name in ("randsae", "sparsify"):
        if name in res:
            res[name]["x_matmul"] = res[name]["min_ms"] / res["matmul"]["min_ms"]
            res[name]["x_matmul_out"] = res[name]["min_ms"] / res["matmul_out"]["min_ms"]
            res[name]["x_matmul_median"] = res[name]["median_ms"] / res["matmul"]["median_ms"]
    return res


# -- FVU after the same token budget --------------------------------------------------------------


def write_synthetic(path: Path, n: int, d: int, seed: int = 0) -> None:
    """Sparse non-negative mixtures of 4096 random unit directions (24 active per token,
    exponential magnitudes) + a constant offset + Gaussian noise, stored as bf16."""
    gen = torch.Generator().manual_seed(seed)
    n_dirs, active = 4096, 24
    dirs = torch.randn(n_dirs, d, generator=gen)
    dirs /= dirs.norm(dim=1, keepdim=True)
    offset = torch.randn(d, generator=gen)
    arr = zarr_io.create_array(path, (n, d), (4096, d), "bfloat16")
    for s in range(0, n, 16384):
        m = min(16384, n - s)
        idx = torch.randint(0, n_dirs, (m, active), generator=gen)
        coef = torch.empty(m, active).exponential_(generator=gen)
        x = torch.einsum("nk,nkd->nd", coef, dirs[idx]) + offset
        x += 0.05 * torch.randn(m, d, generator=gen)
        zarr_io.write_rows(arr, s, x)


def _fvu(x_hat_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    with torch.no_grad():
        num = sum(float((x_hat_fn(c) - c).pow(2).sum()) for c in x.split(4096))
    return num / float((x - x.mean(0)).pow(2).sum())


def compare_fvu(args: argparse.Namespace, dtype: str, work: Path) -> dict[str, Any]:
    d, latents, k, n = args.d, args.latents, args.k, args.batch
    steps = args.fvu_steps
    train_path, eval_path = work / "train", work / "eval"
    if not train_path.exists():
        write_synthetic(train_path, steps * n, d, seed=0)
        write_synthetic(eval_path, 16384, d, seed=0)  # same directions, fresh samples
    cfg = SaeConfig(
        expansion_factor=latents // d,
        k=k,
        batch_size=n,
        warmup_steps=max(1, steps // 10),
        lr=args.fvu_lr,
        auxk_coef=0.0,
        b_dec_init="mean",
        shuffle_buffer_tokens=4 * n,
        checkpoint_every_steps=10**6,
        log_every_steps=10,
        dtype=dtype,
    )
    x_eval = zarr_io.read_rows(zarr_io.open_array(eval_path), 0, 16384).float()
    res: dict[str, Any] = {"dtype": dtype, "steps": steps, "tokens": steps * n}

    t0 = time.perf_counter()
    ours = train_sae(train_path, work / f"ours_{dtype}", cfg, work / f"ck_{dtype}", progress=False)
    res["randsae"] = {"seconds": time.perf_counter() - t0}
    sae = TopKSAE.load(work / f"ours_{dtype}")
    sae.compute_dtype = torch.float32
    res["randsae"]["heldout_fvu"] = _fvu(lambda c: sae(c).x_hat, x_eval)
    res["randsae"]["train_fvu_last"] = ours.fvu

    if _sparsify() is not None and not args.no_sparsify:
        init = TopKSAE.initialised(d, latents, k, seed=cfg.seed)
        stream = ActivationStream(
            train_path,
            batch_size=n,
            shuffle_buffer_tokens=cfg.shuffle_buffer_tokens,
            shuffle_block_sequences=cfg.shuffle_block_sequences,
            data_seed=cfg.data_seed,
            max_tokens=cfg.max_tokens,
        )
        t0 = time.perf_counter()
        with stream:
            first = stream.next_batch()
            assert first is not None
            init.b_dec.data.copy_(first.float().mean(0))
            sp = _sparsify_model(d, latents, k, init)
            opt = torch.optim.Adam(sp.parameters(), lr=cfg.resolved_lr(d))
            batch, step, fvus = first, 0, []
            while batch is not None:
                lr = T.planned_lr(cfg, d, step, stream.expected_batches)
                fvus.append(float(_sparsify_step(sp, opt, batch.float(), dtype, lr)))
                step += 1
                batch = stream.next_batch()
        res["sparsify"] = {"seconds": time.perf_counter() - t0}
        res["sparsify"]["heldout_fvu"] = _fvu(lambda c: sp(c).sae_out.float(), x_eval)
        res["sparsify"]["train_fvu_last"] = statistics.mean(fvus[-10:])
    for name in ("randsae", "sparsify"):
        if name in res:
            res[name]["tokens_per_s"] = res["tokens"] / res[name]["seconds"]
    return res


# -- report ---------------------------------------------------------------------------------------


def _print_timing(r: dict[str, Any]) -> None:
    print(f"\n== step timing, {r['dtype']}, {r['threads']} threads, {r['clock']} ==")
    print(
        f"{'':12s} {'min ms':>9s} {'median ms':>10s} {'tokens/s':>10s} {'x matmul':>9s} {'x mm_out':>9s}"
    )
    for name in ("matmul", "matmul_out", "randsae", "sparsify"):
        if name not in r:
            continue
        v = r[name]
        ratio = f"{v['x_matmul']:9.2f} {v['x_matmul_out']:9.2f}" if "x_matmul" in v else ""
        print(
            f"{name:12s} {v['min_ms']:9.1f} {v['median_ms']:10.1f} {v['tokens_per_s']:10.0f} {ratio}"
        )


def _print_fvu(r: dict[str, Any]) -> None:
    print(f"\n== FVU after {r['tokens']} tokens ({r['steps']} steps), {r['dtype']} ==")
    for name in ("randsae", "sparsify"):
        if name in r:
            v = r[name]
            print(
                f"{name:10s} held-out FVU {v['heldout_fvu']:.4f}  last-10-step train FVU "
                f"{v['train_fvu_last']:.4f}  {v['tokens_per_s']:.0f} tokens/s ({v['seconds']:.1f} s)"
            )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--d", type=int, default=576)
    p.add_argument("--latents", type=int, default=9216)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES))
    p.add_argument("--fvu-steps", type=int, default=30, help="0 skips the FVU comparison")
    p.add_argument(
        "--fvu-lr", type=float, help="peak lr of the FVU runs (default: sparsify's rule)"
    )
    p.add_argument("--no-sparsify", action="store_true")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with the process CPU clock instead of the wall clock: with --threads 1 this "
        "ignores time lost to other processes competing for the cores (not memory bandwidth)",
    )
    p.add_argument("--json", type=Path, help="also write all results here")
    args = p.parse_args()
    if args.latents % args.d:
        p.error("--latents must be a multiple of --d (expansion_factor is an integer)")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, sparsify {'yes' if _sparsify() else 'not installed'}")
    results: dict[str, Any] = {
        "args": vars(args) | {"json": str(args.json)},
        "timing": [],
        "fvu": [],
    }
    for dtype in args.dtypes:
        results["timing"].append(time_steps(args, dtype))
        _print_timing(results["timing"][-1])
    if args.fvu_steps > 0:
        with tempfile.TemporaryDirectory(prefix="sae_bench_") as tmp:
            for dtype in args.dtypes:
                results["fvu"].append(compare_fvu(args, dtype, Path(tmp)))
                _print_fvu(results["fvu"][-1])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
