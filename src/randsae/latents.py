"""The latent cache: each token's top-k SAE latents, stored sparse, plus a latent-major index.

Layout of a latents artifact (format and rules: docs/latents.md)::

    indices.zarr          int32   [n_rows, k]  latent ids per token, -1 where the slot did not fire
    values.zarr           float16 [n_rows, k]  activations, sorted descending within a row
    fire_counts.npy       int64   [n_latents]  activations (eligible positions) per latent
    max_activation.npy    float32 [n_latents]  largest activation per latent (0 if never fired)
    sum_activation.npy    float64 [n_latents]  sum of activations (fp64 sufficient statistics,
    sumsq_activation.npy  float64 [n_latents]  so chunking changes nothing)
    index/offsets.npy     int64   [n_latents + 1]
    index/rows.zarr       int32   [n_entries]  token rows, latent-major, ascending within a latent
    index/values.zarr     float16 [n_entries]

Row r of the cache is token position ``r % ctx_len`` of sequence ``r // ctx_len`` of the tokens
artifact: every position is stored, because example windows need activations at every token.
Positions before ``first_eligible_position`` (an attribute of the arrays) are stored but are not
activations: they are excluded from the statistics and the index. It is 1 when the SAE was
trained without position 0 (the activations stage's default), because position 0 of a packed
sequence has no context and an attention-sink residual the SAE never saw.

Building a cache (:func:`build_latent_cache`, the latents stage's compute): phase 1 runs the
model to the SAE's layer over the interp split (:func:`randsae.forward.hidden_batches`) and
writes indices/values in resumable chunks of whole sequences; phase 2 computes the statistics
and phase 3 the index from the finished cache.

Why a separate latent-major index: examples, quantiles and abstractness need all activations of
one latent; finding them in the token-major cache means scanning it. The index is a counting
sort of the cache's (row, slot) entries by latent: offsets come from the firing counts, and the
entries are spilled into latent-range buckets of bounded size, then each bucket is sorted in
memory, so memory stays bounded by the sort budget however large the cache is.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from randsae import zarr_io
from randsae.errors import RandsaeError

log = logging.getLogger("randsae")

INDICES = "indices.zarr"
VALUES = "values.zarr"
INDEX_DIR = "index"
OFFSETS = f"{INDEX_DIR}/offsets.npy"
INDEX_ROWS = f"{INDEX_DIR}/rows.zarr"
INDEX_VALUES = f"{INDEX_DIR}/values.zarr"
SPILL_DIR = "index.spill"
STAT_FILES = ("fire_counts", "max_activation", "sum_activation", "sumsq_activation")

NO_LATENT = -1
FP16_MAX = float(np.finfo(np.float16).max)
INDEX_CHUNK = 1 << 20
#: Entries (10 bytes each, plus an argsort) one index bucket may hold in memory.
DEFAULT_SORT_BUDGET = 1 << 24
SPILL_DTYPE = np.dtype([("latent", "<i4"), ("row", "<i4"), ("value", "<f2")])


class HookpointError(RandsaeError, ValueError):
    """The SAE artifact does not say which layer it was trained on."""


# --------------------------------------------------------------------------- hookpoint


@dataclass(frozen=True)
class Hookpoint:
    """Where the SAE reads the model, and how its training data was shaped."""

    layer: int
    first_eligible_position: int  # 1 when the SAE's training activations dropped position 0
    acts_dtype: str | None  # storage dtype of the training activations; inputs are rounded to it
    source: str  # where the layer was read (recorded in meta.json)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def resolve_hookpoint(sae_dir: str | Path, store_root: str | Path) -> Hookpoint:
    """Layer and position rule of an SAE artifact.

    Looked up, first hit wins: the sae artifact's meta.json ``info`` (keys ``layer``,
    ``drop_first_position``, ``activations_dtype``), then the params of its ``activations``
    input artifact, then ``layer`` in cfg.json. The activations input may have been deleted to
    save space, which is why the SAE's own record comes first.
    """
    sae_dir, store_root = Path(sae_dir), Path(store_root)
    meta = _read_json(sae_dir / "meta.json")
    info = meta.get("info") or {}
    ref = (meta.get("inputs") or {}).get("activations")
    acts = (_read_json(store_root / ref / "meta.json").get("params") or {}) if ref else {}
    own = meta.get("params") or {}
    if not ref and "activations_dtype" in own:  # sae stage 3: its own params say where it reads
        ref, acts = "(the SAE's params)", {"layer": own["layer"], "drop_first_position": own["drop_first_position"],
                                           "dtype": own["activations_dtype"]}
    cfg = _read_json(sae_dir / "cfg.json")
    for source, record in (("sae meta.json info", info), (f"activations input {ref}", acts), ("sae cfg.json", cfg)):
        if record.get("layer") is not None:
            drop = info.get("drop_first_position", acts.get("drop_first_position", True))
            dtype = info.get("activations_dtype", acts.get("dtype"))
            return Hookpoint(int(record["layer"]), 1 if drop else 0, dtype, source)
    raise HookpointError(
        f"{sae_dir}: cannot tell which layer the SAE reads: no 'layer' in its meta.json info, "
        f"its activations input ({ref or 'none recorded'}) is not in {store_root}, and cfg.json has none"
    )


# --------------------------------------------------------------------------- encoding


@torch.inference_mode()
def encode_hidden(sae: Any, hidden: torch.Tensor, acts_dtype: str | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Hidden states [..., d] -> cache rows (indices int32 [N, k], values fp16 [N, k], n clamped).

    The input is first rounded to the dtype the SAE's training activations were stored in, so the
    cache holds what encoding the stored activations would give.
    """
    x = hidden.reshape(-1, hidden.shape[-1])
    if acts_dtype is not None:
        x = x.to(zarr_io.torch_dtype(acts_dtype))
    values, indices = sae.encode(x.to(torch.float32))
    return to_cache_rows(values, indices)


def to_cache_rows(values: torch.Tensor, indices: torch.Tensor) -> tuple[np.ndarray, np.ndarray, int]:
    """Round to fp16 (clamping at its maximum, counted), sort each row by value descending and
    mark slots whose fp16 value is 0 with -1: a stored 0 is never an activation."""
    values = values.detach().to(torch.float32)
    clamped = int((values > FP16_MAX).sum())
    v16 = values.clamp(0, FP16_MAX).to(torch.float16)
    v16, order = v16.sort(dim=1, descending=True, stable=True)
    idx = indices.gather(1, order).to(torch.int32)
    idx = torch.where(v16 > 0, idx, torch.full_like(idx, NO_LATENT))
    return idx.cpu().numpy(), v16.cpu().numpy(), clamped


# --------------------------------------------------------------------------- the cache arrays


def create_cache_arrays(workdir: Path, n_rows: int, k: int, rows_per_chunk: int, attrs: dict[str, Any]) -> tuple[zarr.Array, zarr.Array]:
    """Empty indices/values arrays, chunked in whole sequences along rows."""
    chunks = (max(1, min(rows_per_chunk, n_rows)), k)
    idx = zarr_io.create_array(workdir / INDICES, (n_rows, k), chunks, "int32", attrs, overwrite=True)
    vals = zarr_io.create_array(workdir / VALUES, (n_rows, k), chunks, "float16", attrs, overwrite=True)
    return idx, vals


def eligible_entries(
    idx: np.ndarray, vals: np.ndarray, row0: int, ctx_len: int, first_eligible: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The activations of a block of cache rows as flat (latent, row, value), ordered by row:
    slots that fired, at eligible positions only."""
    rows = row0 + np.arange(idx.shape[0], dtype=np.int64)
    ok = (idx >= 0) & (vals > 0)
    if first_eligible:
        ok &= ((rows % ctx_len) >= first_eligible)[:, None]
    r, s = np.nonzero(ok)
    return idx[r, s].astype(np.int64), rows[r], vals[r, s]


def iter_cache_blocks(cache_dir: Path, rows_per_block: int | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first row, indices, values) of consecutive row blocks (default: one Zarr chunk each)."""
    idx_arr = zarr_io.open_array(cache_dir / INDICES)
    val_arr = zarr_io.open_array(cache_dir / VALUES)
    step = rows_per_block or idx_arr.chunks[0]
    for r0 in range(0, idx_arr.shape[0], step):
        r1 = min(idx_arr.shape[0], r0 + step)
        yield r0, np.asarray(idx_arr[r0:r1]), np.asarray(val_arr[r0:r1])


# --------------------------------------------------------------------------- statistics


@dataclass
class LatentStats:
    """Per-latent firing statistics over the eligible positions of the cache."""

    fire_counts: np.ndarray  # int64
    max_activation: np.ndarray  # float32
    sum_activation: np.ndarray  # float64
    sumsq_activation: np.ndarray  # float64

    @classmethod
    def zeros(cls, n_latents: int) -> LatentStats:
        return cls(np.zeros(n_latents, np.int64), np.zeros(n_latents, np.float32),
                   np.zeros(n_latents, np.float64), np.zeros(n_latents, np.float64))

    def add(self, latents: np.ndarray, values: np.ndarray) -> None:
        """Accumulate one block of activations (values as stored, in fp64 sums)."""
        n = self.fire_counts.shape[0]
        v = values.astype(np.float64)
        self.fire_counts += np.bincount(latents, minlength=n)
        self.sum_activation += np.bincount(latents, weights=v, minlength=n)
        self.sumsq_activation += np.bincount(latents, weights=v * v, minlength=n)
        np.maximum.at(self.max_activation, latents, values.astype(np.float32))

    def save(self, out_dir: Path) -> None:
        for name in STAT_FILES:
            np.save(out_dir / f"{name}.npy", getattr(self, name))

    @classmethod
    def load(cls, cache_dir: Path) -> LatentStats:
        return cls(*(np.load(cache_dir / f"{name}.npy") for name in STAT_FILES))


#: Rows per block of the statistics pass. Fixed, not the cache's chunk length: the fp64 sums
#: are added block by block, so the grouping must not follow an execution setting
#: (execution.latents.chunk_tokens) or sumsq_activation would change in the last bits.
STATS_BLOCK_ROWS = 1 << 16


def compute_stats(cache_dir: Path, n_latents: int, ctx_len: int, first_eligible: int) -> LatentStats:
    """One pass over the cache."""
    stats = LatentStats.zeros(n_latents)
    for r0, idx, vals in iter_cache_blocks(cache_dir, STATS_BLOCK_ROWS):
        lat, _, v = eligible_entries(idx, vals, r0, ctx_len, first_eligible)
        stats.add(lat, v)
    return stats


# --------------------------------------------------------------------------- latent-major index


def bucket_ranges(counts: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Contiguous latent ranges holding about ``budget`` entries each (at most budget plus the
    count of one latent: a latent is never split)."""
    excl = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    ids = excl // max(1, budget)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(counts)]
    return [(int(a), int(b)) for a, b in zip(starts, ends)]


def _spill(files: list[Any], bucket_of: np.ndarray, lat: np.ndarray, rows: np.ndarray, vals: np.ndarray) -> None:
    """Append one block's entries to their buckets' files, keeping row order within a bucket."""
    rec = np.empty(lat.shape[0], SPILL_DTYPE)
    rec["latent"], rec["row"], rec["value"] = lat, rows, vals
    if len(files) == 1:
        rec.tofile(files[0])
        return
    b = bucket_of[lat]
    order = np.argsort(b, kind="stable")
    rec, b = rec[order], b[order]
    cuts = np.searchsorted(b, np.arange(len(files) + 1))
    for i, f in enumerate(files):
        if cuts[i + 1] > cuts[i]:
            rec[cuts[i] : cuts[i + 1]].tofile(f)


def build_index(cache_dir: Path, counts: np.ndarray, ctx_len: int, first_eligible: int, budget: int = DEFAULT_SORT_BUDGET) -> int:
    """Write index/ (offsets, rows, values) for a finished cache; returns the number of entries.

    Not resumable by itself: it is rebuilt from the (complete) cache if interrupted."""
    offsets = np.zeros(counts.shape[0] + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    total = int(offsets[-1])
    ranges = bucket_ranges(counts, budget)
    bucket_of = np.zeros(counts.shape[0], np.int64)
    for b, (lo, hi) in enumerate(ranges):
        bucket_of[lo:hi] = b
    spill = cache_dir / SPILL_DIR
    shutil.rmtree(spill, ignore_errors=True)
    spill.mkdir()
    files = [open(spill / f"{b}.bin", "wb") for b in range(len(ranges))]  # noqa: SIM115
    try:
        for r0, idx, vals in iter_cache_blocks(cache_dir):
            _spill(files, bucket_of, *eligible_entries(idx, vals, r0, ctx_len, first_eligible))
    finally:
        for f in files:
            f.close()
    (cache_dir / INDEX_DIR).mkdir(exist_ok=True)
    chunk = (max(1, min(total, INDEX_CHUNK)),)
    rows_arr = zarr_io.create_array(cache_dir / INDEX_ROWS, (total,), chunk, "int32", overwrite=True)
    vals_arr = zarr_io.create_array(cache_dir / INDEX_VALUES, (total,), chunk, "float16", overwrite=True)
    for b, (lo, hi) in enumerate(ranges):
        _sort_bucket(spill / f"{b}.bin", rows_arr, vals_arr, int(offsets[lo]), int(offsets[hi]))
    np.save(cache_dir / OFFSETS, offsets)
    shutil.rmtree(spill)
    return total


def _sort_bucket(path: Path, rows_arr: zarr.Array, vals_arr: zarr.Array, start: int, stop: int) -> None:
    """Stable sort one bucket by latent (rows stay ascending) and write it at its offsets."""
    rec = np.fromfile(path, dtype=SPILL_DTYPE)
    if rec.shape[0] != stop - start:
        raise RuntimeError(f"{path}: {rec.shape[0]} entries, the firing counts say {stop - start}")
    order = np.argsort(rec["latent"], kind="stable")
    if stop > start:
        rows_arr[start:stop] = rec["row"][order]
        vals_arr[start:stop] = rec["value"][order]
    os.unlink(path)


def finish_cache(cache_dir: Path, n_latents: int, ctx_len: int, first_eligible: int, budget: int = DEFAULT_SORT_BUDGET) -> tuple[LatentStats, int]:
    """Statistics and index of a cache whose indices/values are complete (phases 2 and 3)."""
    stats = compute_stats(cache_dir, n_latents, ctx_len, first_eligible)
    stats.save(cache_dir)
    return stats, build_index(cache_dir, stats.fire_counts, ctx_len, first_eligible, budget)


# --------------------------------------------------------------------------- building a cache

PROGRESS = "progress.json"


@dataclass(frozen=True)
class CacheSettings:
    """How to compute, not what: none of these change the artifact's bytes (docs/store.md)."""

    batch_size: int = 8
    chunk_tokens: int = 65536
    sort_budget: int = DEFAULT_SORT_BUDGET
    device: str = "auto"

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> CacheSettings:
        return cls(**{k: settings[k] for k in ("batch_size", "chunk_tokens", "sort_budget", "device") if k in settings})


@dataclass(frozen=True)
class CacheTarget:
    """One SAE whose latent cache a job builds: its work directory, the SAE artifact and where
    it reads the model."""

    workdir: Path
    sae_dir: Path
    hook: Hookpoint
    desc: str = "latents"


def build_latent_cache(
    workdir: Path, model_dir: Path, sae_dir: Path, tokens_dir: Path, hook: Hookpoint,
    model_dtype: str, settings: CacheSettings, desc: str = "latents",
) -> dict[str, Any]:
    """All three phases into ``workdir`` (encode, statistics, index); returns the facts for
    meta.json."""
    return build_latent_caches([CacheTarget(workdir, sae_dir, hook, desc)], model_dir, tokens_dir,
                               model_dtype, settings)[0]


def build_latent_caches(
    targets: list[CacheTarget], model_dir: Path, tokens_dir: Path, model_dtype: str, settings: CacheSettings,
) -> list[dict[str, Any]]:
    """The caches of several SAEs of one model variant over the same tokens: one forward pass
    (to the deepest of their layers) feeds every SAE, then each cache gets its statistics and
    index. Each cache is byte for byte the one a job building it alone writes. Returns the
    facts for each target's meta.json."""
    t0 = time.perf_counter()
    encs = encode_tokens(targets, model_dir, tokens_dir, model_dtype, settings)
    seconds_encode = round(time.perf_counter() - t0, 2)
    out = []
    for t, enc in zip(targets, encs, strict=True):
        t1 = time.perf_counter()
        stats, n_entries = finish_cache(t.workdir, enc["n_latents"], enc["ctx_len"], t.hook.first_eligible_position,
                                        settings.sort_budget)
        (t.workdir / PROGRESS).unlink(missing_ok=True)
        fired = int((stats.fire_counts > 0).sum())
        if enc["values_clamped"]:
            log.warning("%s: %d activations exceeded the fp16 maximum and were clamped to %g",
                        t.desc, enc["values_clamped"], FP16_MAX)
        arrays = [zarr_io.open_array(t.workdir / name) for name in (INDICES, VALUES)]
        out.append({
            **enc,
            "layer": t.hook.layer,
            "layer_source": t.hook.source,
            "first_eligible_position": t.hook.first_eligible_position,
            "acts_dtype": t.hook.acts_dtype,
            "n_entries": n_entries,
            "latents_fired": fired,
            "latents_never_fired": enc["n_latents"] - fired,
            "seconds_encode": seconds_encode,
            "seconds_index": round(time.perf_counter() - t1, 2),
            "stored_bytes": sum(a.nbytes_stored() for a in arrays),
            "saes_in_job": len(targets),
        })
    return out


def _resume_point(workdir: Path, layout: dict[str, int]) -> tuple[int, int]:
    """(chunks done, fp16 clamps so far) of an earlier attempt with the same layout, else (0, 0)."""
    p = workdir / PROGRESS
    if not p.is_file() or not (workdir / INDICES).exists():
        return 0, 0
    progress = json.loads(p.read_text())
    if progress.get("layout") != layout:
        log.info("earlier attempt used %s, now %s: starting over", progress.get("layout"), layout)
        return 0, 0
    return int(progress["chunks_done"]), int(progress["values_clamped"])


def _mark_done(workdir: Path, chunks_done: int, layout: dict[str, int], clamped: int) -> None:
    tmp = workdir / (PROGRESS + ".tmp")
    tmp.write_text(json.dumps({"chunks_done": chunks_done, "layout": layout, "values_clamped": clamped}))
    os.replace(tmp, workdir / PROGRESS)


@dataclass
class _Encoding:
    """One target's state during phase 1."""

    target: CacheTarget
    sae: Any
    start: int  # first chunk still to write
    clamped: int
    indices: zarr.Array
    values: zarr.Array


def encode_tokens(
    targets: list[CacheTarget], model_dir: Path, tokens_dir: Path, model_dtype: str, settings: CacheSettings,
) -> list[dict[str, Any]]:
    """Phase 1: forward to the deepest target layer, encode with each SAE, write each
    indices/values chunk by chunk (whole sequences; each cache resumable after its last
    complete chunk, so a killed job redoes only chunks some cache still lacks)."""
    from randsae import forward
    from randsae.devices import resolve_device
    from randsae.models.artifact import load_model_artifact
    from randsae.sae import TopKSAE

    if not targets:
        raise ValueError("build_latent_caches: no target")
    t0 = time.perf_counter()
    dev = resolve_device(settings.device)
    loaded = load_model_artifact(model_dir, dtype=zarr_io.torch_dtype(model_dtype), device=dev)
    tokens = forward.open_tokens(tokens_dir)
    n_seq, ctx_len = tokens.shape
    if n_seq * ctx_len >= 2**31:
        raise ValueError(f"{n_seq * ctx_len} tokens: the cache's int32 row ids allow fewer than 2**31")
    seqs_per_chunk = max(1, settings.chunk_tokens // ctx_len)
    layout = {"seqs_per_chunk": seqs_per_chunk}
    encs = []
    for t in targets:
        sae = TopKSAE.load(t.sae_dir, device=dev)
        if sae.d_model != loaded.model.config.hidden_size:
            raise ValueError(f"{t.sae_dir}: SAE width {sae.d_model} != model width {loaded.model.config.hidden_size}")
        start, clamped = _resume_point(t.workdir, layout)
        attrs = {"ctx_len": ctx_len, "n_seq": n_seq, "n_latents": sae.n_latents, "layer": t.hook.layer,
                 "first_eligible_position": t.hook.first_eligible_position, "hookpoint": "block_output"}
        if start:
            idx_arr, val_arr = (zarr_io.open_array(t.workdir / n, mode="r+") for n in (INDICES, VALUES))
            log.info("%s: resuming at chunk %d", t.desc, start)
        else:
            idx_arr, val_arr = create_cache_arrays(t.workdir, n_seq * ctx_len, sae.k, seqs_per_chunk * ctx_len, attrs)
        encs.append(_Encoding(t, sae, start, clamped, idx_arr, val_arr))
    seconds_load = time.perf_counter() - t0
    layers = sorted({t.hook.layer for t in targets})
    n_chunks = -(-n_seq // seqs_per_chunk)
    first = min(e.start for e in encs)
    desc = targets[0].desc + (f" and {len(targets) - 1} more SAEs" if len(targets) > 1 else "")
    with forward.progress_bar(f"latents {desc}", n_seq * ctx_len, first * seqs_per_chunk * ctx_len) as bar:
        for c in range(first, n_chunks):
            s0, s1 = c * seqs_per_chunk, min(n_seq, (c + 1) * seqs_per_chunk)
            todo = [e for e in encs if e.start <= c]
            parts: list[list[tuple[np.ndarray, np.ndarray, int]]] = [[] for _ in todo]
            for b in forward.hidden_batches(loaded, tokens, range(s0, s1), layers, settings.batch_size, dev, bar):
                for e, got in zip(todo, parts):
                    got.append(encode_hidden(e.sae, b.hidden[e.target.hook.layer], e.target.hook.acts_dtype))
            for e, got in zip(todo, parts):
                e.indices[s0 * ctx_len : s1 * ctx_len] = np.concatenate([p[0] for p in got])
                e.values[s0 * ctx_len : s1 * ctx_len] = np.concatenate([p[1] for p in got])
                e.clamped += sum(p[2] for p in got)
                _mark_done(e.target.workdir, c + 1, layout, e.clamped)
    return [{"n_rows": n_seq * ctx_len, "n_seq": n_seq, "ctx_len": ctx_len, "k": e.sae.k,
             "n_latents": e.sae.n_latents, "values_clamped": e.clamped, "device": str(dev),
             "seconds_load": round(seconds_load, 2)} for e in encs]


# --------------------------------------------------------------------------- reading


class LatentCache:
    """Read access to a finished latents artifact (see the module docstring for the layout)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.indices = zarr_io.open_array(self.path / INDICES)
        self.values = zarr_io.open_array(self.path / VALUES)
        attrs: dict[str, Any] = dict(self.indices.attrs)
        self.ctx_len: int = int(attrs["ctx_len"])
        self.n_seq: int = int(attrs["n_seq"])
        self.n_latents: int = int(attrs["n_latents"])
        self.layer: int = int(attrs["layer"])
        self.first_eligible_position: int = int(attrs["first_eligible_position"])
        self.k: int = self.indices.shape[1]
        self.offsets = np.load(self.path / OFFSETS)
        self.index_rows = zarr_io.open_array(self.path / INDEX_ROWS)
        self.index_values = zarr_io.open_array(self.path / INDEX_VALUES)
        self.stats = LatentStats.load(self.path)

    @property
    def n_rows(self) -> int:
        return self.indices.shape[0]

    @property
    def n_eligible_tokens(self) -> int:
        return self.n_seq * max(0, self.ctx_len - self.first_eligible_position)

    def latent(self, latent: int) -> tuple[np.ndarray, np.ndarray]:
        """All activations of one latent: (rows int64 ascending, values float32), read from the
        index without touching the token-major cache."""
        a, b = int(self.offsets[latent]), int(self.offsets[latent + 1])
        return np.asarray(self.index_rows[a:b]).astype(np.int64), np.asarray(self.index_values[a:b]).astype(np.float32)

    def index_range(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Entries of latents [lo, hi): (latent int64, row int64, value float32), latent-major."""
        a, b = int(self.offsets[lo]), int(self.offsets[hi])
        lat = np.repeat(np.arange(lo, hi, dtype=np.int64), np.diff(self.offsets[lo : hi + 1]))
        rows = np.asarray(self.index_rows[a:b]).astype(np.int64)
        return lat, rows, np.asarray(self.index_values[a:b]).astype(np.float32)

    def iter_index(self, budget: int = DEFAULT_SORT_BUDGET) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
        """(lo, hi, latent, row, value) for latent ranges of about ``budget`` entries each."""
        for lo, hi in bucket_ranges(self.stats.fire_counts, budget):
            yield (lo, hi, *self.index_range(lo, hi))

    def dense(self, start: int, stop: int, eligible_only: bool = True) -> np.ndarray:
        """Rows [start, stop) as a dense float32 [rows, n_latents] matrix. For tests and small
        slices only: never call it on the whole cache."""
        idx = np.asarray(self.indices[start:stop])
        vals = np.asarray(self.values[start:stop])
        out = np.zeros((stop - start, self.n_latents), np.float32)
        first = self.first_eligible_position if eligible_only else 0
        lat, rows, v = eligible_entries(idx, vals, start, self.ctx_len, first)
        out[rows - start, lat] = v
        return out
