"""Examples on a planted latent cache (no model): the window rule at sequence and document
boundaries, bursts collapsing to one activating window, quantile quotas, disjoint explainer /
test / non-activating sets, and the bad cases (no eligible latent, fewer than asked, a latent
that fires everywhere)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from randsae.autointerp.types import LatentExamples
from randsae.examples import (
    TABLE_FILE,
    ExampleParams,
    TokenSource,
    build_examples,
    latent_candidates,
    load_examples,
    quantile_bins,
    quotas,
    scan_cache,
)
from randsae.latents import LatentCache, create_cache_arrays, finish_cache, to_cache_rows

N_SEQ, CTX, N_LAT, WINDOW = 40, 64, 6, 8
SEPARATED, BURST, RARE, POS0, DENSE, NEVER = range(N_LAT)


class FakeTokenizer:
    def batch_decode(self, ids):
        return [f"<{i[0]}>" for i in ids]


def write_cache(path, dense: np.ndarray, ctx_len: int, first_eligible: int = 1, budget: int = 1 << 24) -> LatentCache:
    """A latents artifact from a dense [rows, latents] matrix (test helper: the stage's phases
    2 and 3 on hand-made phase-1 arrays)."""
    path.mkdir(parents=True, exist_ok=True)
    k = max(1, int((dense > 0).sum(1).max()))
    vals, idx = torch.from_numpy(dense.astype(np.float32)).topk(k, dim=1)
    idx_np, val_np, _ = to_cache_rows(vals, idx)
    attrs = {"ctx_len": ctx_len, "n_seq": dense.shape[0] // ctx_len, "n_latents": dense.shape[1], "layer": 0,
             "first_eligible_position": first_eligible}
    ia, va = create_cache_arrays(path, dense.shape[0], k, 4 * ctx_len, attrs)
    ia[:], va[:] = idx_np, val_np
    finish_cache(path, dense.shape[1], ctx_len, first_eligible, budget)
    return LatentCache(path)


def planted() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 30, (N_SEQ, CTX)).astype(np.int32)
    doc = np.zeros((N_SEQ, CTX), np.uint8)
    doc[5, 40] = 1  # long documents: windows fit
    doc[6, 33] = 1  # activation at 30 must shift left to end at 33
    doc[7, 28] = doc[7, 32] = 1  # a 4-token document around position 30
    dense = np.zeros((N_SEQ, CTX, N_LAT), np.float32)
    for s in range(N_SEQ):
        for j, pos in enumerate((10, 30, 50)):
            dense[s, pos, SEPARATED] = 1 + (3 * s + j) / 8  # distinct, fp16-exact
        if s < 20:
            dense[s, 20:25, BURST] = [1, 2, 4, 2, 1]
        dense[s, 0, POS0] = 5.0  # position 0 only: never an activation
        dense[s, 1:, DENSE] = 1.0
    dense[0, [5, 15, 45], RARE] = 3.0
    return tokens, doc, dense.reshape(N_SEQ * CTX, N_LAT)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tokens, doc, dense = planted()
    cache = write_cache(tmp_path_factory.mktemp("cache") / "latents", dense, CTX)
    return cache, TokenSource(tokens, doc, 1), dense


def params(**over) -> ExampleParams:
    base = dict(n_latents=10, min_activations=10, window=WINDOW, explainer_examples=10, explainer_sampling="quantile",
                test_examples=20, n_quantiles=5, non_activating=6, seed=0)
    return ExampleParams(**{**base, **over})


def run(setup, tmp_path, **over):
    cache, tokens, _ = setup
    info = build_examples(cache, tokens, FakeTokenizer(), params(**over), tmp_path)
    return info, {b.latent: b for b in load_examples(tmp_path)}, pq.read_table(tmp_path / TABLE_FILE)


def span(ex):
    start = ex.source[0] * CTX + ex.source[1]
    return start, start + len(ex.tokens)


# --------------------------------------------------------------------------- windows


def test_window_rule_centres_shifts_and_truncates(setup):
    _, tokens, _ = setup
    rows = np.array([10, 5 * CTX + 50, 5 * CTX + 42, 6 * CTX + 30, 7 * CTX + 30, 3 * CTX + 1, 3 * CTX + 63])
    start, end = tokens.windows(rows, WINDOW)
    got = [(int(s), int(e)) for s, e in zip(start, end)]
    c = CTX
    assert got == [
        (6, 14),  # centred: window // 2 tokens before
        (5 * c + 46, 5 * c + 54),
        (5 * c + 40, 5 * c + 48),  # shifted right: the document starts at 40
        (6 * c + 25, 6 * c + 33),  # shifted left: the next document starts at 33
        (7 * c + 28, 7 * c + 32),  # truncated: a 4-token document
        (3 * c, 3 * c + 8),  # shifted right: the sequence starts at 3c
        (3 * c + 56, 4 * c),  # shifted left: the sequence ends
    ]


def test_bursts_collapse_to_one_window_and_position_zero_is_ineligible(setup):
    cache, tokens, _ = setup
    scan = scan_cache(cache, tokens, WINDOW)
    assert cache.stats.fire_counts[BURST] == 100 and scan.n_windows[BURST] == 20
    assert scan.n_windows[SEPARATED] == 3 * N_SEQ
    assert cache.stats.fire_counts[POS0] == 0 and scan.n_windows[POS0] == 0
    assert scan.n_windows[RARE] == 3
    c = latent_candidates(*cache.latent(BURST), tokens, params())
    assert set((c.anchor % CTX).tolist()) == {22} and set(c.value.tolist()) == {4.0}


def test_scan_is_independent_of_the_chunking(setup):
    cache, tokens, _ = setup
    whole, parts = scan_cache(cache, tokens, WINDOW), scan_cache(cache, tokens, WINDOW, budget=50)
    for f in ("n_windows", "token_lookup_share", "top_token_id", "top_token_share"):
        assert np.allclose(getattr(whole, f), getattr(parts, f), equal_nan=True), f


# --------------------------------------------------------------------------- sampling


def test_quotas_and_bins():
    assert quotas(10, 5).tolist() == [2, 2, 2, 2, 2]
    assert quotas(7, 5).tolist() == [1, 1, 1, 2, 2]  # remainders go to the strongest bins
    assert quotas(2, 5).tolist() == [0, 0, 0, 1, 1]
    assert quantile_bins(np.array([5.0, 1.0, 3.0, 2.0, 4.0, 0.5]), 3).tolist() == [2, 0, 1, 1, 2, 0]


def test_quantile_sampling_gives_the_right_counts_per_quantile(setup, tmp_path):
    cache, tokens, _ = setup
    _, bundles, _ = run(setup, tmp_path)
    b = bundles[SEPARATED]
    assert [e.quantile for e in b.explainer].count(0) == 2
    for name, per_bin in (("explainer", 2), ("test", 4)):
        qs = [e.quantile for e in getattr(b, name)]
        assert {q: qs.count(q) for q in set(qs)} == dict.fromkeys(range(5), per_bin), name
    # each example's quantile is the rank bin of its (peak) activation among all windows
    values = np.sort(latent_candidates(*cache.latent(SEPARATED), tokens, params()).value)
    edges = [values[(q * values.shape[0]) // 5] for q in range(5)] + [np.inf]
    for e in b.explainer + b.test:
        assert edges[e.quantile] <= e.max_activation < edges[e.quantile + 1]
    assert b.meta["shortfall"] == {"explainer": 0, "test": 0, "non_activating": 0}


def test_explainer_test_and_non_activating_windows_are_disjoint(setup, tmp_path):
    _, bundles, _ = run(setup, tmp_path)
    _, _, dense = setup
    for latent, b in bundles.items():
        spans = sorted(span(e) for e in (*b.explainer, *b.test, *b.non_activating))
        assert all(e0 <= s1 for (_, e0), (s1, _) in zip(spans, spans[1:])), latent
        for e in b.non_activating:
            s, t = span(e)
            assert e.quantile == -1 and not e.activating and e.max_activation == 0
            assert not dense[s:t, latent][(np.arange(s, t) % CTX) >= 1].any()
        for e in (*b.explainer, *b.test):
            s, t = span(e)
            assert e.activating and np.allclose(e.activations, dense[s:t, latent] * ((np.arange(s, t) % CTX) >= 1))
            assert e.tokens == tuple(f"<{i}>" for i in e.token_ids)


def test_top_sampling_takes_the_strongest_windows(setup, tmp_path):
    cache, tokens, _ = setup
    _, bundles, _ = run(setup, tmp_path, explainer_sampling="top")
    got = sorted((e.max_activation for e in bundles[SEPARATED].explainer), reverse=True)
    best = np.sort(latent_candidates(*cache.latent(SEPARATED), tokens, params()).value)[::-1][:10]
    assert got == best.tolist()


def test_random_sampling_and_reproducibility(setup, tmp_path):
    _, a, _ = run(setup, tmp_path / "a", explainer_sampling="random")
    _, b, _ = run(setup, tmp_path / "b", explainer_sampling="random")
    assert a == b and len(a[SEPARATED].explainer) == 10
    _, c, _ = run(setup, tmp_path / "c", explainer_sampling="random", seed=1)
    assert c[SEPARATED] != a[SEPARATED]


def test_parquet_table_has_every_latent_and_the_documented_columns(setup, tmp_path):
    info, bundles, table = run(setup, tmp_path)
    assert table.column_names == ["latent", "n_fires", "frequency", "max_activation", "n_windows", "token_entropy",
                                  "token_lookup_share", "top_token_id", "top_token_share", "single_token",
                                  "eligible", "sampled"]
    rows = {r["latent"]: r for r in table.to_pylist()}
    assert len(rows) == N_LAT
    assert [lat for lat, r in rows.items() if r["eligible"]] == [SEPARATED, BURST, DENSE]
    assert sorted(bundles) == [SEPARATED, BURST, DENSE] and all(rows[lat]["sampled"] for lat in bundles)
    assert rows[NEVER]["n_fires"] == 0 and np.isnan(rows[NEVER]["token_lookup_share"])
    assert np.isnan(rows[RARE]["token_entropy"]) and rows[SEPARATED]["token_entropy"] > 0
    assert rows[SEPARATED]["token_entropy"] == pytest.approx(bundles[SEPARATED].meta["token_entropy"])
    assert rows[DENSE]["frequency"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- bad cases


def test_no_eligible_latent_writes_valid_empty_output(setup, tmp_path, caplog):
    info, bundles, table = run(setup, tmp_path, min_activations=10**6)
    assert bundles == {} and json.loads((tmp_path / "examples.json").read_text()) == []
    assert info["n_eligible"] == 0 and info["n_sampled"] == 0 and info["short"]
    assert "no latent has" in info["warnings"][0] and "no latent has" in caplog.text
    assert table.num_rows == N_LAT and not any(table.column("eligible").to_pylist())


def test_fewer_eligible_than_asked_takes_all_and_records_it(setup, tmp_path):
    info, bundles, _ = run(setup, tmp_path, n_latents=50)
    assert info["n_sampled"] == info["n_eligible"] == 3 and info["short"]
    assert "only 3 latents" in info["warnings"][0]
    info, bundles, _ = run(setup, tmp_path, n_latents=2)
    assert info["n_sampled"] == 2 and not info["short"] and info["warnings"] == []


def test_a_latent_that_fires_everywhere_records_its_shortfall(setup, tmp_path):
    info, bundles, _ = run(setup, tmp_path)
    b = bundles[DENSE]
    assert b.non_activating == () and b.meta["shortfall"]["non_activating"] == 6
    assert info["latents_with_shortfall"] >= 1
    assert isinstance(b, LatentExamples)


def test_sampled_latents_examples_do_not_depend_on_the_other_latents(setup, tmp_path):
    _, all3, _ = run(setup, tmp_path / "a")
    _, two, _ = run(setup, tmp_path / "b", n_latents=2)
    for latent, b in two.items():
        assert b == all3[latent]


def test_an_sae_whose_latents_never_fire_gives_valid_empty_output(tmp_path):
    tokens, doc, dense = planted()
    dense[:] = 0
    dense[:: CTX, 0] = 1.0  # position 0 only: stored, but not an activation
    cache = write_cache(tmp_path / "latents", dense, CTX)
    assert cache.offsets[-1] == 0 and cache.latent(0)[0].shape == (0,)
    info = build_examples(cache, TokenSource(tokens, doc, 1), FakeTokenizer(), params(), tmp_path / "ex")
    assert info["n_sampled"] == 0 and load_examples(tmp_path / "ex") == []
    table = pq.read_table(tmp_path / "ex" / TABLE_FILE)
    assert table.column("n_fires").to_pylist() == [0] * N_LAT
    assert table.column("top_token_id").to_pylist() == [-1] * N_LAT
