"""Time the TopK SAE sparse ops (randsae.kernels) and print a Markdown table.

    python benchmarks/kernels_bench.py                 # CPU torch path; plus CUDA if available
    python benchmarks/kernels_bench.py --device cuda   # Triton vs torch path on the GPU
    python benchmarks/kernels_bench.py --device cuda --self-check   # the kernels' self-check only

Every row is compared with the dense encoder matmul ``x @ W_enc.T`` at the same shape, because
the CPU trainer's budget is stated in those units (a whole update step <= 1.3x that matmul).
On CPU the table also shows the naive gather formulation (materialising ``W_dec[indices]``,
``[N, k, d]``) that the torch path replaced. On CUDA it shows Triton next to the torch path and the
largest absolute difference between them.

Indices come from a real TopK over ``x @ W_enc.T`` so the latent-frequency pattern is realistic
for a freshly initialised SAE.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from randsae.kernels import reference as ref
from randsae.kernels.csr import _build_latent_csr, clear_latent_csr_memo

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BASELINE = "encoder matmul x @ W_enc.T (baseline)"
TOPK = "topk over [N, L] (context, not a kernel)"
SORT = "(latent CSR sort, included in both weight grads)"


def _once_ms(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_all(
    fns: dict[str, Callable[[], object]], device: torch.device, reps: int, warmup: int = 2
) -> dict[str, float]:
    """Milliseconds per call of each fn, timed round-robin so that every op (and the baseline)
    sees the same machine conditions. CUDA: median of event timings. CPU: best of ``reps``; on a
    shared machine other processes only ever add time, so the minimum is the most repeatable
    estimate of the op's own cost."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            samples[name].append(_once_ms(fn, device))
    pick = statistics.median if device.type == "cuda" else min
    return {name: pick(times) for name, times in samples.items()}


def make_inputs(n: int, d: int, n_latents: int, k: int, dtype: torch.dtype, device: torch.device):
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(n, d, generator=gen).to(device, dtype)
    W_enc = (torch.randn(n_latents, d, generator=gen) / d**0.5).to(device, dtype)
    W_dec = (torch.randn(n_latents, d, generator=gen) / d**0.5).to(device, dtype)
    grad_out = torch.randn(n, d, generator=gen).to(device, dtype)
    values, indices = (x @ W_enc.T).topk(k, dim=1)
    grad_values = torch.randn(n, k, generator=gen).to(device, dtype)
    return x, W_enc, W_dec, grad_out, values, indices, grad_values


def naive_ops(values, indices, W_dec, grad_out, grad_values, x):
    """The original gather formulation, for comparison only (materialises [N, k, d])."""
    d = W_dec.shape[1]
    n_latents = W_dec.shape[0]
    return {
        "decode forward": lambda: torch.einsum("nk,nkd->nd", values, W_dec[indices]),
        "decode grad values": lambda: torch.einsum("nd,nkd->nk", grad_out, W_dec[indices]),
        "decode grad W_dec": lambda: torch.zeros_like(W_dec).index_add_(
            0, indices.reshape(-1), (values.unsqueeze(-1) * grad_out.unsqueeze(1)).reshape(-1, d)
        ),
        "encoder grad W_enc": lambda: torch.zeros(
            n_latents, d, dtype=x.dtype, device=x.device
        ).index_add_(
            0, indices.reshape(-1), (grad_values.unsqueeze(-1) * x.unsqueeze(1)).reshape(-1, d)
        ),
    }


def torch_ops(values, indices, W_dec, grad_out, grad_values, x):
    n_latents = W_dec.shape[0]
    return {
        "decode forward": lambda: ref.sparse_decode_ref(values, indices, W_dec),
        "decode grad values": lambda: ref.sparse_decode_grad_values_ref(
            grad_out, indices, W_dec, values.dtype
        ),
        "decode grad W_dec": lambda: ref.sparse_decode_grad_weight_ref(
            grad_out, values, indices, W_dec
        ),
        "encoder grad W_enc": lambda: ref.sparse_encoder_weight_grad_ref(
            grad_values, indices, x, n_latents
        ),
    }


def triton_ops(values, indices, W_dec, grad_out, grad_values, x):
    from randsae.kernels import encoder_grad, topk_decode

    n_latents = W_dec.shape[0]
    return {
        "decode forward": lambda: topk_decode.sparse_decode(values, indices, W_dec),
        "decode grad values": lambda: topk_decode.sparse_decode_grad_values(
            grad_out, indices, W_dec, values.dtype
        ),
        "decode grad W_dec": lambda: topk_decode.sparse_decode_grad_weight(
            grad_out, values, indices, W_dec
        ),
        "encoder grad W_enc": lambda: encoder_grad.sparse_encoder_weight_grad(
            grad_values, indices, x, n_latents
        ),
    }


def bench_cpu(args: argparse.Namespace, dtype: torch.dtype) -> str:
    device = torch.device("cpu")
    x, W_enc, W_dec, grad_out, values, indices, grad_values = make_inputs(
        args.n, args.d, args.latents, args.k, dtype, device
    )
    pre = x @ W_enc.T
    ops: dict[str, Callable[[], object]] = {
        BASELINE: lambda: x @ W_enc.T,
        TOPK: lambda: pre.topk(args.k, dim=1),
        SORT: lambda: _build_latent_csr(indices, args.latents),
    }
    fast = torch_ops(values, indices, W_dec, grad_out, grad_values, x)
    ops.update({name: cold(fn) for name, fn in fast.items()})
    ms = time_all(ops, device, args.reps)
    naive = {}
    if not args.no_naive:  # after the fast path: its 300 MB temporaries disturb other timings
        naive_fns = naive_ops(values, indices, W_dec, grad_out, grad_values, x)
        naive = time_all(naive_fns, device, max(3, args.reps // 3))
    matmul = ms[BASELINE]
    lines = [
        f"CPU, {torch.get_num_threads()} threads, {args.dtype}, N={args.n} d={args.d} "
        f"L={args.latents} k={args.k}, best of {args.reps}",
        "",
        "| op | torch path (ms) | x encoder matmul | naive gather (ms) |",
        "|---|---:|---:|---:|",
    ]
    for name, t in ms.items():
        naive_cell = f"{naive[name]:.1f}" if name in naive else ""
        lines.append(f"| {name} | {t:.1f} | {t / matmul:.2f} | {naive_cell} |")
    step = sum(ms[name] for name in fast) - ms[SORT]  # a step sorts once (memoised layout)
    lines.append(f"| four sparse ops in one step (one sort) | {step:.1f} | {step / matmul:.2f} | |")
    return "\n".join(lines)


def cold(fn: Callable[[], object]) -> Callable[[], object]:
    """fn with the latent-CSR memo cleared first, so every timed call pays for its own sort."""

    def run() -> object:
        clear_latent_csr_memo()
        return fn()

    return run


def bench_triton(args: argparse.Namespace, dtype: torch.dtype, device: torch.device) -> str:
    """Triton vs the torch path on ``device`` (CUDA; on CPU only meaningful as a smoke test of
    this script under TRITON_INTERPRET=1, the timings are the interpreter's)."""
    x, W_enc, W_dec, grad_out, values, indices, grad_values = make_inputs(
        args.n, args.d, args.latents, args.k, dtype, device
    )
    fast = torch_ops(values, indices, W_dec, grad_out, grad_values, x)
    tri = triton_ops(values, indices, W_dec, grad_out, grad_values, x)
    fns: dict[str, Callable[[], object]] = {BASELINE: lambda: x @ W_enc.T}
    fns.update({f"triton {name}": cold(fn) for name, fn in tri.items()})  # warmup autotunes
    fns.update({f"torch {name}": cold(fn) for name, fn in fast.items()})
    ms = time_all(fns, device, args.reps)
    matmul = ms[BASELINE]
    lines = [
        f"{_device_name(device)}, {args.dtype}, N={args.n} d={args.d} L={args.latents} k={args.k}",
        "",
        "| op | triton (ms) | torch path (ms) | speedup | triton x encoder matmul | max abs diff |",
        "|---|---:|---:|---:|---:|---:|",
        f"| encoder matmul x @ W_enc.T (baseline) | | {matmul:.3f} | | 1.00 | |",
    ]
    for name in fast:
        tri_ms, torch_ms = ms[f"triton {name}"], ms[f"torch {name}"]
        diff = (tri[name]().float() - fast[name]().float()).abs().max().item()
        lines.append(
            f"| {name} | {tri_ms:.3f} | {torch_ms:.3f} | {torch_ms / tri_ms:.1f}x "
            f"| {tri_ms / matmul:.3f} | {diff:.2e} |"
        )
    tri_sum = sum(ms[f"triton {name}"] for name in fast)
    torch_sum = sum(ms[f"torch {name}"] for name in fast)
    lines.append(
        f"| all four (each sorting) | {tri_sum:.3f} | {torch_sum:.3f} | {torch_sum / tri_sum:.1f}x "
        f"| {tri_sum / matmul:.3f} | |"
    )
    return "\n".join(lines)


def self_check_table(device: torch.device, dtypes: list[str]) -> str:
    """The Triton kernels' self-check (randsae.kernels.self_check) per dtype on ``device``, as
    the dispatcher runs it before the first Triton use; the time includes the first
    compilation and autotuning of every kernel at the check's shape."""
    from randsae.kernels import dispatch

    n, k, n_latents, d = dispatch.SELF_CHECK_SHAPE
    lines = [
        f"Triton self-check on {_device_name(device)}, N={n} k={k} L={n_latents} d={d}",
        "",
        "| dtype | verdict | failing kernel | max abs error | tolerance | seconds |",
        "|---|---|---|---:|---|---:|",
    ]
    for name in dtypes:
        v = dispatch.self_check(device, DTYPES[name])
        verdict = "pass" if v.ok else f"FAIL{': ' + v.error if v.error else ''}"
        lines.append(
            f"| {name} | {verdict} | {v.kernel or ''} | {v.max_error:.2e} | {v.tolerance} "
            f"| {v.seconds:.1f} |"
        )
    return "\n".join(lines)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(device)})"
    return f"{device.type} (Triton interpreter)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--n", type=int, default=4096, help="tokens per batch")
    parser.add_argument("--d", type=int, default=576, help="model width")
    parser.add_argument("--latents", type=int, default=9216, help="number of SAE latents")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--no-naive", action="store_true", help="skip the naive CPU column")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--self-check",
        action="store_true",
        help="only run the Triton kernels' self-check (fp32, bf16, fp16) on the device and exit",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    devices = {"auto": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []), "cpu": ["cpu"]}
    devices["cuda"] = ["cuda"]
    for dev in devices[args.device]:
        if dev == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device")
        if args.self_check:
            if dev == "cpu":
                print("self-check: skipped on cpu (the dispatcher uses the torch path there)")
            else:
                print(self_check_table(torch.device(dev), ["fp32", "bf16", "fp16"]))
        elif dev == "cpu":
            print(bench_cpu(args, dtype))
        else:
            print(bench_triton(args, dtype, torch.device(dev)))
        print()


if __name__ == "__main__":
    main()
