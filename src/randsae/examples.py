"""Auto-interp examples from a latent cache (rules in docs/latents.md).

Definitions, in the order they build on each other:

activation
    A (token row, latent) entry of the cache's latent-major index: the latent fired (stored
    fp16 value > 0) at an eligible position.
window of a row
    ``window`` tokens centred on the row (``window // 2`` tokens before it), shifted to lie inside
    the row's segment, where segments are cut at every sequence start and every document start
    (``doc_start``). A segment shorter than ``window`` gives a shorter window.
    So a window never mixes two documents or two packed sequences.
activating window
    The window of an activation that is the largest activation of its latent inside that window
    (earliest on ties). Its activation is therefore the window's maximum, and the windows around
    one burst of activity collapse to one. ``n_windows`` counts them per latent.
eligible latent
    ``n_windows >= min_activations``. ``n_latents`` eligible latents are sampled per SAE with
    ``seed`` (all of them when fewer are eligible; the shortfall is recorded).
quantiles
    A latent's activating windows ranked by activation and cut into ``n_quantiles`` equal-count
    bins; quantile 0 is the weakest, ``n_quantiles - 1`` the strongest.
explainer examples
    ``explainer_examples`` windows: ``quantile`` spreads them evenly over the bins (remainders to
    the strongest bins) and draws at random within a bin; ``top`` takes the strongest;
    ``random`` draws uniformly from all activating windows.
test examples
    ``test_examples`` windows spread evenly over the bins, drawn at random.
non-activating examples
    ``non_activating`` windows of uniformly drawn eligible rows in which the latent never fires.

No two examples of a latent share a token (explainer, test and non-activating windows are
pairwise disjoint). A bin or a latent that runs out of windows gives fewer examples; the
shortfall is recorded per latent. Randomness comes from ``numpy.random.default_rng([seed,
latent])``, so one latent's examples do not depend on which other latents were sampled.

Output: :class:`randsae.autointerp.types.LatentExamples` per sampled latent (examples carry
``source = (sequence, start position)`` and token ids; the window's anchor is its first
maximum), written as a JSON list by :func:`build_examples`, plus a Parquet table of every latent.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from randsae import abstractness, zarr_io
from randsae.autointerp.types import NON_ACTIVATING, Example, LatentExamples, examples_from_json
from randsae.examples_schema import TABLE_FILE, LatentRow
from randsae.latents import LatentCache
from randsae.rows import arrow_schema, table_from_columns, write_table

log = logging.getLogger("randsae")

EXAMPLES_FILE = "examples.json"
FORMAT = "randsae.examples"
FORMAT_VERSION = 1
SAMPLING = ("quantile", "top", "random")
#: Index entries scanned at once by :func:`scan_cache` (about 100 bytes of working memory each).
SCAN_BUDGET = 1 << 22


@dataclass(frozen=True)
class ExampleParams:
    """The examples artifact's parameters (the examples stage's ``PARAM_KEYS``; defaults: config/schema.yaml)."""

    n_latents: int = 100
    min_activations: int = 200
    window: int = 32
    explainer_examples: int = 40
    explainer_sampling: str = "quantile"
    test_examples: int = 100
    n_quantiles: int = 10
    non_activating: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.explainer_sampling not in SAMPLING:
            raise ValueError(f"explainer_sampling: {self.explainer_sampling!r} is not one of {list(SAMPLING)}")
        if self.window < 2 or self.n_quantiles < 1 or self.min_activations < 1:
            raise ValueError(f"window must be >= 2, n_quantiles and min_activations >= 1: {self}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ExampleParams:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in known})


# --------------------------------------------------------------------------- tokens and windows


class TokenSource:
    """The interp split as flat token ids, plus the segment boundaries windows may not cross."""

    def __init__(self, tokens: np.ndarray, doc_start: np.ndarray | None, first_eligible: int):
        n_seq, self.ctx_len = tokens.shape
        self.ids = np.ascontiguousarray(tokens.reshape(-1)).astype(np.int64)
        self.n_rows = self.ids.shape[0]
        self.first_eligible = first_eligible
        boundary = np.zeros(self.n_rows, bool) if doc_start is None else doc_start.reshape(-1).astype(bool)
        boundary[:: self.ctx_len] = True
        self.boundaries = np.flatnonzero(boundary)

    @classmethod
    def from_artifact(cls, tokens_dir: str | Path, first_eligible: int) -> TokenSource:
        d = Path(tokens_dir)
        doc = d / "doc_start.zarr"
        doc_start = np.asarray(zarr_io.open_array(doc)[:]) if doc.exists() else None
        return cls(np.asarray(zarr_io.open_array(d / "tokens.zarr")[:]), doc_start, first_eligible)

    @property
    def n_eligible(self) -> int:
        return (self.n_rows // self.ctx_len) * max(0, self.ctx_len - self.first_eligible)

    def windows(self, anchors: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        """[start, end) of the window of each anchor row (see the module docstring)."""
        anchors = np.asarray(anchors, dtype=np.int64)
        i = np.searchsorted(self.boundaries, anchors, side="right")
        seg_start = self.boundaries[i - 1]
        nxt = self.boundaries[np.minimum(i, self.boundaries.shape[0] - 1)]
        seg_end = np.where(i < self.boundaries.shape[0], nxt, self.n_rows)
        start = np.maximum(np.minimum(anchors - width // 2, seg_end - width), seg_start)
        return start, np.minimum(start + width, seg_end)

    def token_counts(self) -> np.ndarray:
        """Eligible positions per token id (the n_t of the token-lookup baseline)."""
        pos = np.arange(self.n_rows) % self.ctx_len
        return np.bincount(self.ids[pos >= self.first_eligible])

    def random_eligible_rows(self, rng: np.random.Generator, n: int) -> np.ndarray:
        seqs = rng.integers(0, self.n_rows // self.ctx_len, n)
        return seqs * self.ctx_len + rng.integers(self.first_eligible, self.ctx_len, n)


def peak_mask(keys: np.ndarray, values: np.ndarray, start_keys: np.ndarray, end_keys: np.ndarray) -> np.ndarray:
    """Which entries are the largest (earliest on ties) of the entries inside their own window.

    ``keys`` are sorted and identify an entry (``latent * n_rows + row``, or just rows for one
    latent); ``start_keys``/``end_keys`` bound each entry's window the same way. Work is the
    total number of (entry, neighbour-in-window) pairs: each window holds at most ``window``
    entries of one latent.
    """
    lo = np.searchsorted(keys, start_keys, side="left")
    hi = np.searchsorted(keys, end_keys, side="left")
    i = np.arange(keys.shape[0])
    peak = np.ones(keys.shape[0], bool)
    active, d = np.flatnonzero(i - lo >= 1), 1
    while active.size:  # earlier neighbours must be strictly smaller
        peak[active] &= values[active - d] < values[active]
        d += 1
        active = active[active - lo[active] >= d]
    active, d = np.flatnonzero(hi - 1 - i >= 1), 1
    while active.size:  # later neighbours must not be larger
        peak[active] &= values[active + d] <= values[active]
        d += 1
        active = active[hi[active] - 1 - active >= d]
    return peak


# --------------------------------------------------------------------------- whole-cache scan


@dataclass
class CacheScan:
    """Per-latent facts from one pass over the latent-major index."""

    n_windows: np.ndarray  # activating windows per latent
    token_lookup_share: np.ndarray
    top_token_id: np.ndarray
    top_token_share: np.ndarray


def scan_cache(cache: LatentCache, tokens: TokenSource, window: int, budget: int = SCAN_BUDGET) -> CacheScan:
    """Activating windows and token statistics of every latent, in latent ranges of bounded size."""
    L = cache.n_latents
    n_windows = np.zeros(L, np.int64)
    explained = np.zeros(L, np.float64)
    top_token = np.full(L, -1, np.int64)
    top_mass = np.zeros(L, np.float64)
    counts = tokens.token_counts()
    for lo, hi, lat, rows, vals in cache.iter_index(budget):
        start, end = tokens.windows(rows, window)
        base = lat * tokens.n_rows
        peaks = peak_mask(base + rows, vals, base + start, base + end)
        n_windows[lo:hi] = np.bincount(lat - lo, weights=peaks, minlength=hi - lo).astype(np.int64)
        terms = abstractness.token_terms(lat - lo, tokens.ids[rows], vals, counts, hi - lo)
        explained[lo:hi], top_token[lo:hi], top_mass[lo:hi] = terms.explained, terms.top_token, terms.top_mass
    stats = cache.stats
    share = abstractness.token_lookup_share(explained, stats.sum_activation, stats.sumsq_activation, tokens.n_eligible)
    top_share = np.divide(top_mass, stats.sum_activation, out=np.full(L, np.nan), where=stats.sum_activation > 0)
    return CacheScan(n_windows, share, top_token, top_share)


def select_latents(n_windows: np.ndarray, min_activations: int, n_latents: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(eligible mask, sorted sampled latent ids): all eligible latents when there are too few."""
    eligible = n_windows >= min_activations
    ids = np.flatnonzero(eligible)
    if ids.shape[0] > n_latents:
        ids = np.sort(np.random.default_rng(seed).choice(ids, n_latents, replace=False))
    return eligible, ids


# --------------------------------------------------------------------------- one latent


class _Taken:
    """Disjoint [start, end) intervals already used by one latent's examples."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def free(self, s: int, e: int) -> bool:
        i = bisect.bisect_right(self.starts, s)
        return not ((i > 0 and self.ends[i - 1] > s) or (i < len(self.starts) and self.starts[i] < e))

    def add(self, s: int, e: int) -> None:
        i = bisect.bisect_right(self.starts, s)
        self.starts.insert(i, s)
        self.ends.insert(i, e)


@dataclass
class Candidates:
    """The activating windows of one latent."""

    anchor: np.ndarray  # row of the peak activation
    value: np.ndarray
    start: np.ndarray
    end: np.ndarray
    quantile: np.ndarray  # 0 = weakest bin


def quantile_bins(values: np.ndarray, n_quantiles: int) -> np.ndarray:
    """Equal-count bins by rank (stable on ties): bin of rank r is floor(r * n_q / n)."""
    n = values.shape[0]
    bins = np.empty(n, np.int64)
    bins[np.argsort(values, kind="stable")] = (np.arange(n) * n_quantiles) // max(n, 1)
    return bins


def quotas(total: int, n_bins: int) -> np.ndarray:
    """``total`` spread over bins as evenly as possible, remainders to the strongest bins."""
    out = np.full(n_bins, total // n_bins, np.int64)
    rest = total % n_bins
    if rest:
        out[n_bins - rest :] += 1
    return out


def latent_candidates(rows: np.ndarray, values: np.ndarray, tokens: TokenSource, p: ExampleParams) -> Candidates:
    start, end = tokens.windows(rows, p.window)
    keep = peak_mask(rows, values, start, end)
    v = values[keep]
    return Candidates(rows[keep], v, start[keep], end[keep], quantile_bins(v, p.n_quantiles))


def _pick(order: Sequence[int] | np.ndarray, quota: int, c: Candidates, taken: _Taken) -> list[int]:
    """The first ``quota`` candidates in ``order`` whose windows are still free."""
    out: list[int] = []
    for i in order:
        if len(out) >= quota:
            break
        s, e = int(c.start[i]), int(c.end[i])
        if taken.free(s, e):
            taken.add(s, e)
            out.append(int(i))
    return out


def sample_activating(c: Candidates, p: ExampleParams, taken: _Taken, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """(explainer, test) candidate positions; disjoint windows by construction."""
    if p.explainer_sampling == "top":
        explainer = _pick(np.argsort(-c.value, kind="stable"), p.explainer_examples, c, taken)
    elif p.explainer_sampling == "random":
        explainer = _pick(rng.permutation(c.value.shape[0]), p.explainer_examples, c, taken)
    else:
        explainer = _spread(c, p.explainer_examples, p.n_quantiles, taken, rng)
    return explainer, _spread(c, p.test_examples, p.n_quantiles, taken, rng)


def _spread(c: Candidates, total: int, n_quantiles: int, taken: _Taken, rng: np.random.Generator) -> list[int]:
    """``total`` windows spread over the quantile bins, random within a bin."""
    picked: list[int] = []
    for q, quota in enumerate(quotas(total, n_quantiles)):
        picked += _pick(rng.permutation(np.flatnonzero(c.quantile == q)), int(quota), c, taken)
    return picked


def sample_non_activating(
    fire_rows: np.ndarray, tokens: TokenSource, p: ExampleParams, taken: _Taken, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """Windows of random eligible rows that hold no activation of the latent, disjoint from the
    latent's other examples. Gives up after 100 draws per requested window (dense latents)."""
    out: list[tuple[int, int]] = []
    budget = 100 * p.non_activating + 100
    while len(out) < p.non_activating and budget > 0:
        draw = min(budget, 4 * (p.non_activating - len(out)) + 16)
        budget -= draw
        start, end = tokens.windows(tokens.random_eligible_rows(rng, draw), p.window)
        empty = np.searchsorted(fire_rows, end) == np.searchsorted(fire_rows, start)
        for s, e in zip(start[empty].tolist(), end[empty].tolist()):
            if len(out) < p.non_activating and taken.free(s, e):
                taken.add(s, e)
                out.append((s, e))
    return out


# --------------------------------------------------------------------------- example records


class TokenDecoder:
    """Token id -> display string, one tokenizer call per distinct id."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, ids: Sequence[int]) -> list[str]:
        missing = sorted({i for i in ids if i not in self.cache})
        if missing:
            for i, text in zip(missing, self.tokenizer.batch_decode([[i] for i in missing])):
                self.cache[i] = text
        return [self.cache[i] for i in ids]


def make_example(
    latent: int, quantile: int, start: int, end: int, fire_rows: np.ndarray, fire_values: np.ndarray,
    tokens: TokenSource, decode: TokenDecoder,
) -> Example:
    """One window: its decoded tokens with the latent's activation on each (0 at ineligible
    positions), and its source (sequence, start position) in the interp split."""
    ids = tokens.ids[start:end].tolist()
    acts = np.zeros(end - start, np.float64)
    a, b = np.searchsorted(fire_rows, [start, end])
    acts[fire_rows[a:b] - start] = fire_values[a:b]
    return Example(tokens=tuple(decode(ids)), activations=tuple(acts.tolist()), latent=int(latent),
                   quantile=int(quantile), activating=quantile != NON_ACTIVATING, token_ids=tuple(ids),
                   source=divmod(int(start), tokens.ctx_len))


def _finite(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def explainer_entropy(explainer: Sequence[Example]) -> float:
    """The paper's token-distribution entropy over a latent's explainer examples."""
    if not explainer:
        return float("nan")
    ids = np.concatenate([np.asarray(e.token_ids, np.int64) for e in explainer])
    acts = np.concatenate([np.asarray(e.activations) for e in explainer])
    return abstractness.token_entropy(ids, acts)


def latent_examples(
    latent: int, cache: LatentCache, tokens: TokenSource, decode: TokenDecoder, p: ExampleParams, scan: CacheScan,
) -> LatentExamples:
    """Every example of one latent; its stats and any shortfall go into ``meta``."""
    rng = np.random.default_rng([p.seed, int(latent)])
    rows, values = cache.latent(latent)
    c = latent_candidates(rows, values, tokens, p)
    taken = _Taken()
    explainer_ix, test_ix = sample_activating(c, p, taken, rng)
    quiet = sample_non_activating(rows, tokens, p, taken, rng)

    def activating(picked: list[int]) -> list[Example]:
        return [make_example(latent, int(c.quantile[i]), int(c.start[i]), int(c.end[i]), rows, values, tokens, decode)
                for i in picked]

    explainer = activating(explainer_ix)
    non_activating = [make_example(latent, NON_ACTIVATING, s, e, rows, values, tokens, decode) for s, e in quiet]
    stats = cache.stats
    meta = {
        "n_fires": int(stats.fire_counts[latent]),
        "n_windows": int(c.anchor.shape[0]),
        "max_activation": float(stats.max_activation[latent]),
        "frequency": float(stats.fire_counts[latent]) / max(tokens.n_eligible, 1),
        "token_entropy": _finite(explainer_entropy(explainer)),
        "token_lookup_share": _finite(float(scan.token_lookup_share[latent])),
        "top_token_id": int(scan.top_token_id[latent]),
        "top_token_share": _finite(float(scan.top_token_share[latent])),
        "window": p.window,
        "shortfall": {
            "explainer": p.explainer_examples - len(explainer_ix),
            "test": p.test_examples - len(test_ix),
            "non_activating": p.non_activating - len(quiet),
        },
    }
    return LatentExamples(latent=int(latent), explainer=tuple(explainer), test=tuple(activating(test_ix)),
                          non_activating=tuple(non_activating), meta=meta)


# --------------------------------------------------------------------------- the artifact


#: The Arrow schema of latents.parquet (the row schema: :class:`randsae.examples_schema.LatentRow`).
TABLE_SCHEMA = arrow_schema(LatentRow)


def latent_table(cache: LatentCache, tokens: TokenSource, scan: CacheScan, eligible: np.ndarray,
                 sampled: np.ndarray, entropy: dict[int, float | None]) -> pa.Table:
    """One row per latent of the SAE; token_entropy only for sampled latents (it needs their
    explainer examples), NaN elsewhere."""
    L = cache.n_latents
    ent = np.full(L, np.nan)
    for lat, h in entropy.items():
        ent[lat] = np.nan if h is None else h
    is_sampled = np.zeros(L, bool)
    is_sampled[sampled] = True
    stats = cache.stats
    cols = {
        "latent": np.arange(L, dtype=np.int32),
        "n_fires": stats.fire_counts,
        "frequency": stats.fire_counts / max(tokens.n_eligible, 1),
        "max_activation": stats.max_activation.astype(np.float32),
        "n_windows": scan.n_windows,
        "token_entropy": ent,
        "token_lookup_share": scan.token_lookup_share,
        "top_token_id": scan.top_token_id.astype(np.int32),
        "top_token_share": scan.top_token_share,
        "single_token": abstractness.single_token(scan.top_token_share),
        "eligible": eligible,
        "sampled": is_sampled,
    }
    return table_from_columns(LatentRow, cols)


def build_examples(
    cache: LatentCache, tokens: TokenSource, tokenizer: Any, p: ExampleParams, out_dir: Path,
    budget: int = SCAN_BUDGET,
) -> dict[str, Any]:
    """Write examples.json (a JSON list of ``LatentExamples``, one sampled latent per line) and
    latents.parquet (every latent); return the facts for meta.json. An SAE with no eligible
    latent gives an empty list, a full table and a warning, not an error: the pipeline goes on."""
    if tokens.n_rows != cache.n_rows or tokens.ctx_len != cache.ctx_len:
        raise ValueError(f"tokens ({tokens.n_rows} rows, ctx {tokens.ctx_len}) do not match the latent cache "
                         f"({cache.n_rows} rows, ctx {cache.ctx_len})")
    scan = scan_cache(cache, tokens, p.window, budget)
    eligible, sampled = select_latents(scan.n_windows, p.min_activations, p.n_latents, p.seed)
    warnings = _selection_warnings(int(eligible.sum()), p)
    for w in warnings:
        log.warning("%s: %s", cache.path, w)
    decode = TokenDecoder(tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    entropy: dict[int, float | None] = {}
    shortfalls = 0
    with open(out_dir / EXAMPLES_FILE, "w") as f:
        f.write("[")
        for n, latent in enumerate(sampled.tolist()):
            bundle = latent_examples(latent, cache, tokens, decode, p, scan)
            entropy[latent] = bundle.meta["token_entropy"]
            shortfalls += any(bundle.meta["shortfall"].values())
            f.write(("\n" if n == 0 else ",\n") + json.dumps(bundle.to_dict(), allow_nan=False))
        f.write("\n]\n")
    write_table(LatentRow, latent_table(cache, tokens, scan, eligible, sampled, entropy), out_dir / TABLE_FILE)
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "n_latents_total": cache.n_latents, "n_eligible": int(eligible.sum()),
        "n_requested": p.n_latents, "n_sampled": int(sampled.shape[0]),
        "short": bool(sampled.shape[0] < p.n_latents), "latents_with_shortfall": shortfalls,
        "n_eligible_tokens": tokens.n_eligible, "warnings": warnings,
    }


def _selection_warnings(n_eligible: int, p: ExampleParams) -> list[str]:
    """A warning, not an error: how many latents are eligible is a finding (random variants
    have far fewer), and stopping there would block exactly the SAEs the study compares."""
    if n_eligible == 0:
        return [f"no latent has >= {p.min_activations} activating windows: no examples written "
                f"(lower autointerp.min_activations or enlarge the interp split)"]
    if n_eligible < p.n_latents:
        return [f"autointerp.n_latents is {p.n_latents} but only {n_eligible} latents are eligible "
                f"(>= {p.min_activations} activating windows each): all {n_eligible} are used "
                f"(lower autointerp.min_activations or enlarge the interp split to sample more)"]
    return []


def load_examples(path: str | Path) -> list[LatentExamples]:
    """The bundles of an examples.json (or of an examples artifact directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / EXAMPLES_FILE
    with open(path) as f:
        return examples_from_json(json.load(f))
