"""The plan's estimates (randsae.estimates): store size, GPU-hours, LLM cost and device memory
move the right way, the JSON carries the required fields, a group that cannot fit is refused
with a message naming a setting, and a hand-computable case gives exact numbers."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
from _helpers import tiny_config

from randsae import estimates as E
from randsae.config import normalise
from randsae.plan import build_plan

PYTHIA_70M = {"source": {"kind": "hub", "id": "EleutherAI/pythia-70m-deduped", "revision": "main"},
              "layers": [0], "dtype": "float32"}
NO_KEY: dict[str, str] = {}


def pythia_cfg(tmp_path, cache: str = "always", **over) -> dict:
    """A hub model the estimates know (no download: planning is pure) on small splits."""
    cfg = tiny_config(tmp_path / "m", tmp_path / "s", **over)
    cfg["models"] = {"p70": copy.deepcopy(PYTHIA_70M)}
    cfg["variants"] = ["trained"]
    cfg.setdefault("execution", {}).setdefault("activations", {})["cache"] = cache
    return cfg


def est_of(cfg: dict, env: dict[str, str] | None = None) -> E.Estimates:
    c = normalise(cfg, env=NO_KEY if env is None else env)
    return E.estimate(c, build_plan(c))


def stage(est: E.Estimates, name: str) -> E.StageEstimate:
    return next(s for s in est.stages if s.stage == name)


@pytest.mark.parametrize("cache", ["always", "never"])
def test_doubling_train_tokens_doubles_sae_and_forward_hours(tmp_path, cache):
    small = pythia_cfg(tmp_path, cache)
    big = copy.deepcopy(small)
    big["corpus"]["splits"]["train"]["tokens"] *= 2
    a, b = est_of(small), est_of(big)
    for acc in ("a100", "h100"):
        for name in ("activations", "sae"):  # the forward over train and the SAE steps
            ha, hb = stage(a, name).gpu_hours[acc], stage(b, name).gpu_hours[acc]
            assert hb == pytest.approx(2 * ha)
        # eval and interp splits are unchanged: so are their stages
        assert stage(b, "latents").gpu_hours[acc] == pytest.approx(stage(a, "latents").gpu_hours[acc])
    assert stage(b, "activations").store_bytes == 2 * stage(a, "activations").store_bytes
    assert stage(a, "sae").gpu_hours["a100"] > 0


def test_streaming_stores_no_train_activations_and_moves_the_forward_into_sae(tmp_path):
    cached, streamed = est_of(pythia_cfg(tmp_path, "always")), est_of(pythia_cfg(tmp_path, "never"))
    assert stage(cached, "activations").store_bytes > 0 and stage(cached, "activations").jobs == 1
    assert stage(streamed, "activations").store_bytes == 0 and stage(streamed, "activations").jobs == 0
    assert streamed.disk_peak_bytes < cached.disk_peak_bytes
    for acc in ("a100", "h100"):  # the same forward, run by the SAE job instead
        total_cached = stage(cached, "activations").gpu_hours[acc] + stage(cached, "sae").gpu_hours[acc]
        assert stage(streamed, "sae").gpu_hours[acc] == pytest.approx(total_cached)
    assert streamed.largest_group.streamed and streamed.largest_group.model_weights > 0
    assert not cached.largest_group.streamed and cached.largest_group.model_weights == 0


def test_auto_caches_under_the_budget_and_streams_over_it(tmp_path):
    cfg = normalise(pythia_cfg(tmp_path, "auto"), env=NO_KEY)
    plan = build_plan(cfg)
    assert E.group_is_cached(cfg, plan, "p70", "trained")  # 8 KB of activations << 200 GB
    cfg["execution"]["activations"]["cache_budget_gb"] = 1e-9
    assert not E.group_is_cached(cfg, build_plan(cfg), "p70", "trained")


def anthropic_cfg(tmp_path, **over) -> dict:
    """The protocol's defaults (docs/autointerp.md) for 2 latents per SAE, judged by Claude."""
    cfg = pythia_cfg(tmp_path, **over)
    cfg["autointerp"] = {"n_latents": 2, "client": "anthropic", "explainer": "llm",
                         "scorers": ["detection", "fuzzing"], "anthropic_model": "claude-sonnet-5-5"}
    return cfg


def test_anthropic_client_has_an_llm_cost_and_local_has_none(tmp_path):
    paid = est_of(anthropic_cfg(tmp_path), env={"ANTHROPIC_API_KEY": "k"})
    assert paid.llm_cost_usd is not None and paid.llm_cost_usd > 0
    assert stage(paid, "explain").llm_cost_usd > 0 and stage(paid, "score").llm_cost_usd > 0
    # about $0.08 per latent with both scorers at batch prices (docs/autointerp.md, "Cost per latent")
    assert 0.04 < paid.llm_cost_usd / 2 < 0.16
    local = est_of(pythia_cfg(tmp_path))
    assert local.llm_cost_usd is None
    assert all(s.llm_cost_usd is None for s in local.stages)


def test_messages_api_costs_twice_the_batches_api(tmp_path):
    cfg = anthropic_cfg(tmp_path)
    batch = est_of(cfg, env={"ANTHROPIC_API_KEY": "k"})
    cfg["execution"].update({"explain": {"anthropic_batch": False}, "score": {"anthropic_batch": False}})
    direct = est_of(cfg, env={"ANTHROPIC_API_KEY": "k"})
    assert direct.llm_cost_usd == pytest.approx(2 * batch.llm_cost_usd)


def test_lexical_scorer_and_token_list_explainer_cost_nothing(tmp_path):
    cfg = anthropic_cfg(tmp_path)
    cfg["autointerp"].update({"explainer": "token_list", "scorers": ["lexical"]})
    est = est_of(cfg, env={"ANTHROPIC_API_KEY": "k"})
    assert est.llm_cost_usd == 0


def test_unpriced_model_costs_none_not_zero(tmp_path):
    cfg = anthropic_cfg(tmp_path)
    cfg["autointerp"]["anthropic_model"] = "claude-unknown-9"
    assert est_of(cfg, env={"ANTHROPIC_API_KEY": "k"}).llm_cost_usd is None


def test_plan_json_has_the_estimates(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    out = subprocess.run([sys.executable, "-m", "randsae", "plan", "--json"], capture_output=True, text=True,
                         check=True, env=env).stdout
    est = json.loads(out)["estimates"]
    assert isinstance(est["disk_peak_bytes"], int) and est["disk_peak_bytes"] > 0
    assert est["gpu_hours"]["a100"] > est["gpu_hours"]["h100"] > 0
    assert est["llm_cost_usd"] is None  # the default config's client is local
    assert set(est["stages"]) >= {"model", "tokens", "activations", "sae", "latents", "explain", "score"}
    assert {"jobs", "store_bytes", "gpu_hours"} <= set(est["stages"]["sae"])
    assert est["assumptions"]["forward_mfu"]["source"]
    assert est["largest_group_memory"]["total_bytes"] > 0


# ---------------------------------------------------------------------------- memory


def test_memory_check_refuses_an_impossible_group_naming_a_setting():
    d = 4096
    big = E.predict_group_memory(group="sae huge/trained: 8 SAEs (streamed)", d_model=d,
                                 saes=[E.SaeShape(64 * d, 4096, "float32")] * 8, streamed=True,
                                 n_model_params=6_857_302_016, model_dtype="bfloat16", hooked_layers=8,
                                 forward_batch_tokens=8 * 2048, window_rows=262144, model="huge")
    with pytest.raises(E.DeviceMemoryError) as err:
        E.check_fits(big, E.A100.memory_bytes)
    msg = str(err.value)
    assert "sae.expansion" in msg and "models.huge.layers" in msg and "80.0 GiB" in msg
    assert msg.index("sae.expansion") < msg.index("sae.batch_size")  # the largest part's setting first
    with pytest.raises(E.DeviceMemoryError, match="execution.sae.forward_batch_size"):
        E.check_fits(big, 1, "a smaller execution.sae.forward_batch_size")
    small = big._replace(sae_state=0, sae_workspace=0, window_buffer=0, model_weights=0, forward_batch=1)
    E.check_fits(small, E.A100.memory_bytes)  # fits: no error


def test_memory_of_a_hand_computable_group():
    # d=4, 8 latents: params 8*5 + 8*4 + 4 = 76; params + grads + Adam m, v in fp32 = 16 * 76
    est = E.predict_group_memory(group="g", d_model=4, saes=[E.SaeShape(8, 2, "float32")], streamed=True,
                                 n_model_params=100, model_dtype="float32", hooked_layers=1,
                                 forward_batch_tokens=3, window_rows=5, activations_dtype="bfloat16")
    assert est.sae_state == 1216
    assert est.sae_workspace == 2 * 8 * 4 + 2 * 5 * 4  # pre-activations + centred input with bias column
    assert est.model_weights == 400
    assert est.forward_batch == 3 * 4 * (4 * 12 + 4 * 1)  # 12 live block tensors + 1 hooked fp32 output
    assert est.window_buffer == 2 * 5 * 4 * 2  # two windows of 5 bf16 rows
    assert est.total == 1216 + 104 + 400 + 624 + 80
    cached = E.predict_group_memory(group="g", d_model=4, saes=[E.SaeShape(8, 2, "float32")], streamed=False,
                                    n_model_params=100, forward_batch_tokens=3, window_rows=5)
    assert cached.total == 1216 + 104  # no model, batch or window on the device


def test_memory_for_specs_reads_the_model_artifact(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 4}))
    (tmp_path / "variant.json").write_text(json.dumps({"n_params": 100}))
    spec = {"params": {"expansion": 2, "batch_size": 2, "dtype": "float32", "model_dtype": "float32",
                       "activations_dtype": "bfloat16", "shuffle_buffer_tokens": 5, "layer": 0},
            "labels": {"model": "m", "variant": "trained"}}
    est = E.memory_for_specs([spec], tmp_path, streamed_layers=[0], forward_batch_seqs=1, ctx_len=3)
    direct = E.predict_group_memory(group="x", d_model=4, saes=[E.SaeShape(8, 2, "float32")], streamed=True,
                                    n_model_params=100, hooked_layers=1, forward_batch_tokens=3, window_rows=5)
    assert est.total == direct.total == 2424
    assert E.memory_for_specs([spec], tmp_path).total == 1216 + 104  # nothing streamed


def test_paper_grid_largest_group_does_not_fit_one_a100():
    from randsae.config import CONFIG_DIR, load_config

    cfg = load_config(CONFIG_DIR / "paper.yaml")
    groups = E.plan_group_memory(cfg, build_plan(cfg))
    assert groups[0].group.startswith("sae pythia-6.9b/")
    assert groups[0].total > E.A100.memory_bytes  # 8 SAEs of 262,144 latents: 256 GiB of fp32 state
    assert groups[-1].total < E.A100.memory_bytes  # pythia-70m fits


# ---------------------------------------------------------------------------- exact numbers


def test_exact_numbers_of_a_hand_computable_plan(tmp_path):
    est = est_of(pythia_cfg(tmp_path, "always"))
    d, lat = 512, 2 * 512
    rows = (8192 // 64) * 63  # whole sequences, position 0 dropped
    params = lat * (d + 1) + lat * d + d
    assert stage(est, "activations").store_bytes == rows * d * 2  # bf16, one layer, one variant
    assert stage(est, "sae").store_bytes == params * 4 + 64 * 1024
    assert stage(est, "sae").transient_bytes == 3 * 12 * params  # 3 checkpoints of weights + Adam m, v
    assert stage(est, "tokens").store_bytes == (2048 + 2048 + 8192) * 5
    # one block of Pythia-70m: (70,426,624 - 2 x 50,304 x 512) / 6 parameters
    block = (70_426_624 - 2 * 50_304 * 512) / 6
    fwd = 8192 * (2 * block + 2 * 64 * d)  # to block 0, fp32 (torch's default: no TF32)
    assert stage(est, "activations").gpu_hours["a100"] == pytest.approx(fwd / (19.5e12 * 0.40) / 3600)
    sae = 2.0 * 2 * d * lat * rows  # step = 2x the encoder GEMM, fp32
    assert stage(est, "sae").gpu_hours["h100"] == pytest.approx(sae / (67e12 * 0.60) / 3600)
    jobs = {s.stage: s.jobs for s in est.stages}
    assert jobs["model"] == 1 and jobs["tokens"] == 3 and jobs["activations"] == 1 and jobs["sae"] == 1


def test_latent_cache_counts_every_row_once_per_token_and_eligible_rows_by_latent(tmp_path):
    # interp: 2048 tokens in 32-token contexts; the per-token arrays hold all 64 x 32 rows
    # (position 0 included), the by-latent index the 64 x 31 eligible ones; k slots of an
    # int32 id and an fp16 value each, compressed at the ratio of the SAE's width
    est = est_of(pythia_cfg(tmp_path, "always"))
    lat = 2 * 512
    cfg = normalise(pythia_cfg(tmp_path, "always"), env=NO_KEY)
    k = cfg["sae"]["k"]
    slots = (64 * 32 + 64 * 31) * k
    ratio = E.latents_compression(lat)
    assert ratio > 1.0
    assert stage(est, "latents").store_bytes == int(slots * 6 / ratio) + 5 * lat * 8
    assert stage(est, "latents").transient_bytes == 64 * 31 * k * 10  # raw spill entries


def test_latents_compression_interpolates_in_log2_latents_and_never_goes_under_one():
    a = E.Assumptions(latents_compression=((4096, 1.5), (1024, 2.0)))  # any order
    assert E.latents_compression(512, a) == 2.0  # narrower than measured: the first point's ratio
    assert E.latents_compression(1024, a) == 2.0 and E.latents_compression(4096, a) == 1.5
    assert E.latents_compression(2048, a) == pytest.approx(1.75)
    assert E.latents_compression(8192, a) == pytest.approx(1.25)  # the last segment's slope
    assert E.latents_compression(2**20, a) == 1.0
    wide, narrow = E.latents_compression(2**18), E.latents_compression(2**15)
    assert 1.0 < wide < narrow  # the shipped measurements: wider ids compress less


def test_unknown_width_gives_unknown_not_zero(tmp_path):
    cfg = pythia_cfg(tmp_path)
    cfg["models"]["p70"]["source"]["id"] = "someone/unknown-model"
    est = est_of(cfg)
    assert stage(est, "sae").store_bytes is None and est.disk_peak_bytes is None
    assert est.gpu_hours["a100"] is None
    assert "unknown" in E.format_estimates(est)


def test_device_split_spreads_a_group_over_the_fewest_devices_that_hold_it():
    from randsae.estimates import MemoryEstimate, device_split

    gib = 1024**3
    # streamed: model 10 GiB on rank 0; four SAEs of 30 GiB (state + workspace) each
    est = MemoryEstimate("g", True, 4, model_weights=10 * gib, forward_batch=0, window_buffer=0,
                         sae_state=100 * gib, sae_workspace=20 * gib)
    costs = [30 * gib] * 4
    one = device_split(est, costs, 1)
    assert (one.devices, one.device_peak) == (1, est.total) and est.total == 130 * gib
    auto = device_split(est, costs, "auto")  # 10 + 30 + 30 = 70 on rank 0, 60 on rank 1
    assert (auto.devices, auto.device_peak) == (2, 70 * gib)
    four = device_split(est, costs, 4)
    assert (four.devices, four.device_peak) == (4, 40 * gib)
    assert device_split(est, costs, 9).devices == 4  # at most one device per SAE
    # rank 0's model (60) leaves no room for an SAE (30): it serves only, ranks 1.. train
    big = device_split(est._replace(model_weights=60 * gib), costs, "auto")
    assert big.devices >= 3 and big.device_peak <= 80 * gib
    # the model alone over 80 GiB: no count fits, auto plans one device
    assert device_split(est._replace(model_weights=90 * gib), costs, "auto").devices == 1
