"""How close an SAE gets to convergence for a few batch sizes and pass counts (docs/sae.md,
"Convergence"), on the cached train activations of a finished default run.

    python benchmarks/convergence_bench.py --store store [--variant trained --layer 9]

Trains one SAE per setting with the real trainer (one torch thread) and prints the steps, the
final training FVU and the convergence statistic (the last 20% of steps' FVU gain).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from randsae.sae.config import SaeConfig
from randsae.sae.convergence import convergence
from randsae.sae.trainer import train_saes

SETTINGS = [  # (expansion, batch_size, passes)
    (8, 1024, 1), (8, 1024, 3), (4, 256, 1), (4, 256, 2),
]


def find_acts(store: Path, variant: str, layer: int) -> Path:
    for meta in sorted((store / "activations").glob("*/meta.json")):
        m = json.loads(meta.read_text())
        if m["labels"].get("variant") == variant and m["labels"].get("layer") == layer:
            return meta.parent / "acts.zarr"
    raise SystemExit(f"no cached activations of {variant} layer {layer} in {store}: run `make demo` first")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", type=Path, default=Path("store"))
    ap.add_argument("--variant", default="trained")
    ap.add_argument("--layer", type=int, default=9)
    args = ap.parse_args()
    torch.set_num_threads(1)
    acts = find_acts(args.store, args.variant, args.layer)
    print(f"{args.variant} layer {args.layer}: {acts}")
    print("| expansion | batch | passes | steps | final train FVU | last-20% gain | seconds |")
    print("|---|---|---|---|---|---|---|")
    for expansion, batch, passes in SETTINGS:
        with tempfile.TemporaryDirectory() as tmp:
            import zarr

            n_rows = zarr.open_array(str(acts), mode="r").shape[0]
            cfg = SaeConfig(expansion_factor=expansion, k=32, batch_size=batch, warmup_steps=20,
                            dead_window_tokens=100_000, max_tokens=n_rows * passes, log_every_steps=5)
            t0 = time.perf_counter()
            train_saes(acts, [Path(tmp) / "sae"], [cfg], Path(tmp) / "ck", progress=False)
            sec = time.perf_counter() - t0
            log = pq.read_table(Path(tmp) / "sae" / "train_log.parquet").to_pydict()
            c = convergence(log["step"], log["fvu"])
            print(f"| {expansion} | {batch} | {passes} | {c.steps} | {log['fvu'][-1]:.4f} | {c.improvement:.4f} | {sec:.1f} |")


if __name__ == "__main__":
    main()
