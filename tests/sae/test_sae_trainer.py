"""Trainer: learning, exact kill-and-resume, several seeds per pass, dead counters, bad input."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

from randsae.sae import (
    ActivationDataError,
    CheckpointMismatchError,
    TopKSAE,
    train_sae,
    train_saes,
)
from randsae.sae import checkpoint as ckpt
from randsae.sae.trainer import dead_mask, lr_at, update_dead_counters


class Killed(Exception):
    """Raised by the test hook to simulate the process dying mid-run."""


def _kill_at(step_to_die: int):
    def hook(step: int) -> None:
        if step == step_to_die:
            raise Killed(step)

    return hook


def _assert_same_sae(dir_a, dir_b):
    a, b = TopKSAE.load(dir_a), TopKSAE.load(dir_b)
    for name, p in a.named_parameters():
        assert torch.equal(p, getattr(b, name)), f"{name} differs"


def test_training_reduces_fvu_well_below_one(tmp_path, make_acts, sparse_mixture, small_cfg):
    acts = make_acts(sparse_mixture(12800, 16, n_dirs=32, active=2), logical="bfloat16")
    cfg = small_cfg(lr=1e-2, checkpoint_every_steps=1000)
    res = train_sae(acts, tmp_path / "out", cfg, tmp_path / "ck", progress=False)
    assert res.steps == 100 and res.tokens == 12800
    assert res.fvu < 0.15, res
    log = pq.read_table(tmp_path / "out" / "train_log.parquet").to_pylist()
    assert [r["step"] for r in log] == list(range(5, 101, 5))
    assert log[0]["fvu"] > 3 * log[-1]["fvu"]
    assert all(r["l0"] <= cfg.k for r in log)
    assert log[0]["lr"] == pytest.approx(1e-2) and log[0]["tokens"] == 5 * 128
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert summary["steps"] == 100 and summary["nonfinite_rows"] == 0
    assert (tmp_path / "out" / "cfg.json").exists() and (
        tmp_path / "out" / "sae.safetensors"
    ).exists()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_kill_and_resume_is_bitwise_identical(
    tmp_path, make_acts, sparse_mixture, small_cfg, dtype
):
    # 2 passes over 1500 rows in windows of 2 chunks, AuxK active (short dead window), bf16 data
    acts = make_acts(sparse_mixture(1500, 12, n_dirs=24), chunk=250, logical="bfloat16")
    cfg = small_cfg(
        expansion_factor=8,
        k=2,
        max_tokens=3000,
        shuffle_buffer_tokens=500,
        shuffle_block_sequences=250,
        dead_window_tokens=256,
        dtype=dtype,
    )
    ref = train_sae(acts, tmp_path / "ref", cfg, tmp_path / "ck_ref", progress=False)
    assert ref.steps == 23
    ref_log = pq.read_table(tmp_path / "ref" / "train_log.parquet")
    assert min(ref_log.column("dead_fraction").to_pylist()[1:]) > 0  # AuxK in play when killed

    ck = tmp_path / "ck"
    for die_at in (10, 15):  # dies after step 10 (last checkpoint: 7), then after 15 (ckpt 14)
        with pytest.raises(Killed):
            train_sae(acts, tmp_path / "run", cfg, ck, progress=False, on_step=_kill_at(die_at))
    assert [s for s, _ in ckpt.list_checkpoints(ck)] == [7, 14]
    res = train_sae(acts, tmp_path / "run", cfg, ck, progress=False)
    assert res.resumed_from_step == 14 and res.steps == ref.steps and res.fvu == ref.fvu
    _assert_same_sae(tmp_path / "ref", tmp_path / "run")
    assert ref_log.equals(pq.read_table(tmp_path / "run" / "train_log.parquet"))
    # a restart after completion changes nothing
    again = train_sae(acts, tmp_path / "run", cfg, ck, progress=False)
    assert again.steps == ref.steps
    _assert_same_sae(tmp_path / "ref", tmp_path / "run")


def test_several_seeds_in_one_pass_equal_separate_runs(
    tmp_path, make_acts, sparse_mixture, small_cfg
):
    acts = make_acts(sparse_mixture(768, 8))
    cfgs = [small_cfg(seed=s) for s in (0, 1)]
    both = train_saes(acts, [tmp_path / "a", tmp_path / "b"], cfgs, tmp_path / "ck", progress=False)
    assert both[0].fvu != both[1].fvu
    for name, cfg in zip("ab", cfgs):
        train_sae(acts, tmp_path / f"solo_{name}", cfg, tmp_path / f"ck_{name}", progress=False)
        _assert_same_sae(tmp_path / name, tmp_path / f"solo_{name}")
    # SAEs on one stream must share its data order (batches) ...
    with pytest.raises(ValueError, match="batch_size"):
        train_saes(
            acts,
            [tmp_path / "x", tmp_path / "y"],
            [cfgs[0], cfgs[1].replace(batch_size=64)],
            tmp_path / "c2",
        )


def test_members_of_other_shapes_in_one_pass_equal_separate_runs(
    tmp_path, make_acts, sparse_mixture, small_cfg
):
    """... but may differ in anything else: expansion, k, lr, init (one job trains a grid)."""
    acts = make_acts(sparse_mixture(768, 8))
    cfgs = [small_cfg(), small_cfg(expansion_factor=2, k=3), small_cfg(lr=3e-3, b_dec_init="mean")]
    dirs = [tmp_path / f"m{i}" for i in range(3)]
    together = train_saes(acts, dirs, cfgs, tmp_path / "ck", progress=False)
    assert len({r.fvu for r in together}) == 3
    for i, cfg in enumerate(cfgs):
        solo = train_sae(acts, tmp_path / f"solo{i}", cfg, tmp_path / f"ck{i}", progress=False)
        assert solo.steps == together[i].steps
        _assert_same_sae(dirs[i], tmp_path / f"solo{i}")


def test_dead_counters_count_tokens_not_steps(tmp_path, make_acts, sparse_mixture, small_cfg):
    since = torch.tensor([0, 5, 300])
    update_dead_counters(since, torch.tensor([False, True, False]), 64)
    assert since.tolist() == [64, 0, 364]
    assert dead_mask(since, 100).tolist() == [False, False, True]

    acts = make_acts(sparse_mixture(640, 8))
    cfg = small_cfg(
        expansion_factor=16,
        k=1,
        batch_size=64,
        dead_window_tokens=192,
        checkpoint_every_steps=10,
        log_every_steps=10,
    )
    res = train_sae(acts, tmp_path / "out", cfg, tmp_path / "ck", progress=False)
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "ck"))
    counters = state["parts"][0]["members"][0]["since_fired"]
    assert res.tokens == 640
    assert set(counters.tolist()) <= set(range(0, 641, 64))  # whole batches of tokens
    assert (counters == 640).any()  # some latents never fired
    assert res.dead_fraction == pytest.approx(dead_mask(counters, 192).float().mean().item())


def test_zero_variance_batches_are_skipped_and_counted(
    tmp_path, make_acts, sparse_mixture, small_cfg
):
    x = sparse_mixture(1280, 8)
    x[:512] = 1.0  # two whole chunks of identical rows
    acts = make_acts(x, chunk=256)
    # a window is one block of 256 rows: 4 batches of constants
    cfg = small_cfg(shuffle_buffer_tokens=256, shuffle_block_sequences=256)
    res = train_sae(acts, tmp_path / "out", cfg, tmp_path / "ck", progress=True)  # bar too
    assert res.zero_variance_batches == 4 and res.steps == 6 and res.tokens == 6 * 128
    const = make_acts(torch.ones(512, 8), name="const")
    with pytest.raises(ValueError, match="zero variance"):
        train_sae(const, tmp_path / "o2", cfg, tmp_path / "ck2", progress=False)


def test_nonfinite_rows_end_up_in_summary(tmp_path, make_acts, sparse_mixture, small_cfg):
    x = sparse_mixture(768, 8)
    x[10, 2] = float("nan")
    acts = make_acts(x)
    res = train_sae(acts, tmp_path / "out", small_cfg(), tmp_path / "ck", progress=False)
    assert res.nonfinite_rows == 1 and res.steps == 767 // 128
    meta = pq.read_schema(tmp_path / "out" / "train_log.parquet").metadata
    assert json.loads(meta[b"randsae.counters"])["nonfinite_rows"] == 1


def test_wrong_width_and_foreign_checkpoints_are_errors(
    tmp_path, make_acts, sparse_mixture, small_cfg
):
    acts = make_acts(sparse_mixture(512, 8))
    with pytest.raises(ActivationDataError, match="expected d_model = 16"):
        train_sae(
            acts, tmp_path / "o", small_cfg(), tmp_path / "ck", expected_d_model=16, progress=False
        )
    train_sae(acts, tmp_path / "o", small_cfg(), tmp_path / "ck", progress=False)
    with pytest.raises(CheckpointMismatchError, match="configs"):
        train_sae(acts, tmp_path / "o", small_cfg(lr=1e-3), tmp_path / "ck", progress=False)


def test_lr_warms_up_linearly_then_decays_or_stays_constant():
    assert [lr_at(s, 1.0, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert [lr_at(s, 1.0, 2, total_steps=6) for s in range(6)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert lr_at(0, 0.5, 0) == 0.5


def test_chunking_changes_no_byte_of_the_sae(tmp_path, make_seq_acts, sparse_mixture, small_cfg):
    """activations.chunk_tokens is in no key, so it must not change what the SAE key covers."""
    rows_per_seq = 15
    x = sparse_mixture(rows_per_seq * 100, 12, n_dirs=24)
    c3 = make_seq_acts(x, rows_per_seq, 3, "c3", logical="bfloat16")
    c5 = make_seq_acts(x, rows_per_seq, 5, "c5", logical="bfloat16")
    # 4-sequence blocks (60 rows, no chunking is a multiple), 3 blocks per window, 2 passes
    cfg = small_cfg(
        expansion_factor=8,
        k=2,
        max_tokens=3000,
        shuffle_buffer_tokens=200,
        shuffle_block_sequences=4,
        dead_window_tokens=256,
    )
    ref = train_sae(c3, tmp_path / "c3", cfg, tmp_path / "ck3", progress=False)
    assert ref.steps == 3000 // 128
    train_sae(c5, tmp_path / "c5", cfg, tmp_path / "ck5", progress=False)
    for name in ("sae.safetensors", "cfg.json", "train_log.parquet"):
        assert (tmp_path / "c3" / name).read_bytes() == (tmp_path / "c5" / name).read_bytes(), name

    # killed on one chunking, resumed on the other from the cursor: still the same bytes
    ck = tmp_path / "ck_mixed"
    with pytest.raises(Killed):
        train_sae(c3, tmp_path / "mixed", cfg, ck, progress=False, on_step=_kill_at(10))
    res = train_sae(c5, tmp_path / "mixed", cfg, ck, progress=False)
    assert res.resumed_from_step == 7 and res.steps == ref.steps
    want = (tmp_path / "c3" / "sae.safetensors").read_bytes()
    assert (tmp_path / "mixed" / "sae.safetensors").read_bytes() == want

    # the keyed block length does change the SAE (so the equalities above are not vacuous)
    other = cfg.replace(shuffle_block_sequences=5)
    train_sae(c3, tmp_path / "b5", other, tmp_path / "ck_b5", progress=False)
    assert (tmp_path / "b5" / "sae.safetensors").read_bytes() != want


def test_a_rerun_with_another_checkpoint_interval_resumes(tmp_path, make_acts, sparse_mixture, small_cfg):
    """The interval is an execution setting: killed with checkpoints every 7 steps, resumed with
    every 3, the SAE and its cfg.json equal an uninterrupted run's (issue: CheckpointMismatchError)."""
    acts = make_acts(sparse_mixture(1500, 12, n_dirs=24), chunk=250)
    cfg = small_cfg(expansion_factor=8, k=2, max_tokens=3000, shuffle_buffer_tokens=500, shuffle_block_sequences=250)
    ref = train_sae(acts, tmp_path / "ref", cfg, tmp_path / "ck_ref", progress=False)
    ck = tmp_path / "ck"
    with pytest.raises(Killed):
        train_sae(acts, tmp_path / "run", cfg, ck, progress=False, on_step=_kill_at(10))
    res = train_sae(acts, tmp_path / "run", cfg.replace(checkpoint_every_steps=3), ck, progress=False)
    assert res.resumed_from_step == 7 and res.steps == ref.steps
    _assert_same_sae(tmp_path / "ref", tmp_path / "run")
    assert (tmp_path / "ref" / "cfg.json").read_bytes() == (tmp_path / "run" / "cfg.json").read_bytes()
    assert "checkpoint_every_steps" not in (tmp_path / "run" / "cfg.json").read_text()
