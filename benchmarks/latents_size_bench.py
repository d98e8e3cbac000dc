"""Bytes on disk of a latent cache at the paper's interp shape, against its raw size: the source
of ``Assumptions.latents_compression`` in :mod:`randsae.estimates` (docs/estimates.md).

The cache is written by the latents stage's own writer (:func:`randsae.latents.create_cache_arrays`,
then :func:`randsae.latents.finish_cache` for the statistics and the by-latent index), so the
layout, chunking and Blosc/LZ4 bit-shuffle compression are exactly the stage's. Only the top-k
content is synthetic, chosen to be hard to compress, so the measured ratio is a floor rather than
a typical value:

- latent ids uniformly random over ``n_latents`` (a trained SAE's skewed firing frequencies only
  make them more compressible);
- values log-uniform over [2^-4, 2^6) with random mantissas, sorted descending within a row as
  :func:`randsae.latents.to_cache_rows` does (a positive fp16 with ten spread exponents is close
  to incompressible).

    python benchmarks/latents_size_bench.py [--latents 32768 262144] [--rows 9999872] [--k 32]

Rows default to the paper's interp split (10M tokens in 256-token contexts: 39,062 x 256).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from randsae import latents as L

RAW_BYTES_PER_SLOT = 4 + 2  # int32 id + fp16 value, once per token and once by latent


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(n_latents: int, n_rows: int, k: int, ctx: int, chunk_rows: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        idx_arr, val_arr = L.create_cache_arrays(root, n_rows, k, chunk_rows, {})
        t0 = time.perf_counter()
        for r0 in range(0, n_rows, chunk_rows):
            n = min(chunk_rows, n_rows - r0)
            ids = rng.integers(0, n_latents, (n, k), dtype=np.int32)
            vals = np.exp2(rng.uniform(-4.0, 6.0, (n, k))).astype(np.float16)
            order = np.argsort(-vals, axis=1, kind="stable")
            idx_arr[r0 : r0 + n] = np.take_along_axis(ids, order, axis=1)
            val_arr[r0 : r0 + n] = np.take_along_axis(vals, order, axis=1)
        _, entries = L.finish_cache(root, n_latents, ctx, first_eligible=1)
        secs = time.perf_counter() - t0
        parts = {
            "indices": dir_bytes(root / L.INDICES), "values": dir_bytes(root / L.VALUES),
            "index_rows": dir_bytes(root / L.INDEX_ROWS), "index_values": dir_bytes(root / L.INDEX_VALUES),
        }
        total = dir_bytes(root)
    raw = n_rows * k * RAW_BYTES_PER_SLOT + entries * RAW_BYTES_PER_SLOT
    return {
        "n_latents": n_latents, "rows": n_rows, "index_entries": entries, "raw_bytes": raw,
        "disk_bytes": total, "ratio": raw / total, "seconds": round(secs, 1),
        **{f"{k_}_ratio": round((n_rows * k if k_ in ("indices", "values") else entries)
                                * (4 if k_ in ("indices", "index_rows") else 2) / v, 3)
           for k_, v in parts.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latents", type=int, nargs="+", default=[32768, 262144],
                    help="SAE widths (the paper's: 64 x d_model, 32,768 for Pythia-70m to 262,144 for 6.9b)")
    ap.add_argument("--rows", type=int, default=39062 * 256)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--chunk-rows", type=int, default=65536, help="the stage's default chunk_tokens")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for n in args.latents:
        print(json.dumps(measure(n, args.rows, args.k, args.ctx, args.chunk_rows, args.seed)), flush=True)


if __name__ == "__main__":
    main()
