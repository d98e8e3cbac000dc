"""Several devices, the parts that need no second process: the split of a group's SAEs between
ranks (assign, fewest_devices, the rule's device count, launch command and GPU request), the
checks of torchrun's world size, and rank 0's data server with the trainer's stand-in streams
(in one process, every part owned by rank 0: the bytes and the round count of a plain run).
Two real processes: tests/workflow/test_distributed_train.py."""

from __future__ import annotations

import pytest
import torch
from _helpers import tiny_config

from randsae.config import normalise
from randsae.plan import build_plan
from randsae.sae import ActivationStream, TopKSAE, TrainPart, train_parts
from randsae.sae import checkpoint as ckpt
from randsae.sae.distributed import RemoteStream, Rounds, Server, join, stream_facts
from randsae.sae_devices import (
    DistributedError,
    assign,
    fewest_devices,
    gpu_resources,
    launch_command,
    rank_loads,
)
from randsae.stages.sae import planned_devices

# -- the split -----------------------------------------------------------------------------------


def test_assign_balances_the_predicted_memory_and_gives_every_rank_an_sae():
    costs = [5, 1, 1, 1, 1, 1, 4]
    owners = assign(costs, 3)
    assert sorted(set(owners)) == [0, 1, 2]
    assert rank_loads(costs, owners, [0, 0, 0]) == [5, 5, 4]
    assert assign(costs, 3) == owners  # a function of its arguments
    # no divisibility: 3 layers' worth of SAEs on 2 devices, 7 on 4
    assert sorted(assign([1] * 3, 2)) == [0, 0, 1]
    assert sorted(set(assign([1] * 7, 4))) == [0, 1, 2, 3]


def test_rank_0s_model_counts_and_rank_0_may_only_serve():
    # rank 0 holds a model bigger than everything else: the SAEs go to the other ranks, each of
    # which trains at least one; rank 0 only reads or streams and serves the activations
    owners = assign([3, 3, 2], 3, base=[100, 0, 0])
    assert owners == [1, 2, 1]
    assert assign([4, 4, 4, 4], 2, base=[8, 0]) == [1, 1, 0, 1]  # 12 and 12
    # with room beside its model, rank 0 trains too
    assert 0 in assign([1] * 6, 3, base=[1, 0, 0])


def test_more_ranks_than_saes_plus_one_is_an_error_naming_the_setting():
    assert sorted(assign([1, 1], 3)) == [1, 2]  # one SAE per rank but 0
    with pytest.raises(DistributedError, match=r"4 devices for 2 SAEs.*execution.sae.devices to at most 3"):
        assign([1, 1], 4)


def test_fewest_devices_is_the_smallest_count_that_fits_or_none():
    assert fewest_devices([10, 10, 10], 0, 30) == 1
    assert fewest_devices([10, 10, 10], 0, 20) == 2
    assert fewest_devices([10, 10, 10], 5, 15) == 3  # rank 0 also holds 5 of model
    # rank 0's 15 of model leave no room for an SAE of 10 under 20: it serves, ranks 1 and 2 train
    assert fewest_devices([10, 10, 10], 15, 20) == 3
    assert fewest_devices([10, 10, 10], 25, 20) is None  # the model alone is too big
    assert fewest_devices([10, 25], 0, 20) is None  # one SAE alone is too big


def test_the_rule_launches_torchrun_and_asks_for_n_gpus_on_one_node():
    build = "'/venv/bin/python' -m randsae build --store /s --threads {threads}"
    assert launch_command(build, 1) == build
    assert launch_command(build, 4) == ("'/venv/bin/python' -m torch.distributed.run --standalone "
                                        "--nproc-per-node 4 -m randsae build --store /s --threads {threads}")
    res = {"mem_mb": 64000, "gres": "gpu:a100:1", "slurm_partition": "gpu"}
    assert gpu_resources(res, 1) == res
    assert gpu_resources(res, 4) == {**res, "gres": "gpu:a100:4", "tasks_per_gpu": 0, "nodes": 1}
    assert gpu_resources({"gpu": 1}, 2) == {"gpu": 2, "tasks_per_gpu": 0, "nodes": 1}
    assert gpu_resources({"mem_mb": 1}, 2) == {"mem_mb": 1}  # no GPU asked for: CPU processes


def test_planned_devices_follows_the_setting_at_most_one_per_sae(tiny_model_dir, tmp_path):
    def plan_for(devices):
        cfg = normalise(tiny_config(tiny_model_dir, tmp_path / "s", **{
            "variants": ["control"], "sae.seeds": [0, 1], "execution.sae.devices": devices}))
        return cfg, build_plan(cfg)

    cfg, plan = plan_for(2)
    saes = plan.stage("sae")
    assert len(saes) == 2 and planned_devices(cfg, plan, saes) == 2
    assert planned_devices(cfg, plan, saes[:1]) == 1  # one SAE left to build: one device
    cfg8, plan8 = plan_for(8)
    assert planned_devices(cfg8, plan8, plan8.stage("sae")) == 2
    cfga, plana = plan_for("auto")
    assert planned_devices(cfga, plana, plana.stage("sae")) == 1  # a tiny group fits one device
    # the device count is in no key
    assert {a.key for a in saes} == {a.key for a in plan8.stage("sae")} == {a.key for a in plana.stage("sae")}


def test_a_world_size_other_than_the_setting_is_an_error(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert join({"devices": 1}) is None and join({}) is None
    with pytest.raises(DistributedError, match=r"devices is 2 but it was started as one process.*torchrun"):
        join({"devices": 2})
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(DistributedError, match=r"devices is 2 but torchrun started 3 processes.*devices: 3"):
        join({"devices": 2})
    with pytest.raises(DistributedError, match="execution.sae.devices must be"):
        join({"devices": 0})


# -- rank 0's server and the stand-in streams ----------------------------------------------------


def _parts_data(sparse_mixture):
    """Two layers' arrays: the second ends a batch earlier (a non-finite row) and begins with
    constant rows (zero-variance batches), so parts stop at different rounds and some rounds
    train one part only."""
    a = sparse_mixture(1280, 8, seed=1)
    b = sparse_mixture(1280, 8, seed=2)
    b[:256] = 1.0
    b[700, 3] = float("nan")
    return a, b


def _train(tmp, acts, cfgs, remote: bool, every: int):
    order = dict(batch_size=128, shuffle_buffer_tokens=256, shuffle_block_sequences=256, data_seed=0, max_tokens=None)
    streams = [ActivationStream(p, **order) for p in acts]
    rounds = Rounds()
    server = None
    if remote:
        server = Server(streams, [[0]] * len(streams), torch.device("cpu"), every, tmp / "server")
        used = [RemoteStream(stream_facts(s), order, server.source(i), rounds) for i, s in enumerate(streams)]
    else:
        used = streams
    parts = [TrainPart(s, [tmp / f"out{i}-{j}" for j in range(len(cfgs))], cfgs) for i, s in enumerate(used)]
    res = train_parts(parts, tmp / "ck", device="cpu", progress=False,
                      round_sync=rounds.sync if remote else None)
    for s in streams:
        s.close()
    return res, server


def test_stand_in_streams_served_by_rank_0_train_the_bytes_of_the_real_streams(
        tmp_path, make_acts, sparse_mixture, small_cfg):
    a, b = _parts_data(sparse_mixture)
    acts = [make_acts(a, name="a", chunk=256), make_acts(b, name="b", chunk=256)]
    cfgs = [small_cfg(shuffle_buffer_tokens=256, shuffle_block_sequences=256, checkpoint_every_steps=3, seed=s)
            for s in (0, 1)]
    plain, _ = _train(tmp_path / "plain", acts, cfgs, remote=False, every=3)
    served, server = _train(tmp_path / "served", acts, cfgs, remote=True, every=3)
    assert server is not None and all(server.ended)
    for p_part, s_part in zip(plain, served):
        for p, s in zip(p_part, s_part):
            assert p._replace(out_dir="", seconds=0) == s._replace(out_dir="", seconds=0)
            ma, mb = TopKSAE.load(p.out_dir), TopKSAE.load(s.out_dir)
            assert all(torch.equal(x, getattr(mb, n)) for n, x in ma.named_parameters())
    # the parts differ where the test needs them to: zero-variance batches, non-finite rows, lengths
    assert plain[1][0].zero_variance_batches == 1 and plain[1][0].nonfinite_rows == 1
    assert plain[0][0].steps == 10 and plain[1][0].steps == 8
    # the round count (checkpoint names) is the plain run's, and the server checkpointed with it
    steps = [s for s, _ in ckpt.list_checkpoints(tmp_path / "plain" / "ck")]
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "served" / "ck")] == steps
    assert steps[-1] == 10 and steps[-1] in dict(ckpt.list_checkpoints(tmp_path / "served" / "server"))


def test_the_stand_in_cursor_round_trips_and_refuses_another_stream(tmp_path, make_acts, sparse_mixture):
    order = dict(batch_size=128, shuffle_buffer_tokens=256, shuffle_block_sequences=256, data_seed=0, max_tokens=None)
    real = ActivationStream(make_acts(sparse_mixture(1024, 8)), **order)
    assert real.expected_batches == 8
    rounds = Rounds()
    server = Server([real], [[0]], torch.device("cpu"), 100, tmp_path / "server")
    s = RemoteStream(stream_facts(real), order, server.source(0), rounds)
    assert s.expected_batches == real.expected_batches and s.d_model == 8
    got = [s.next_batch() for _ in range(3)]
    assert all(g is not None and g.shape == (128, 8) for g in got)
    assert rounds.latest == 3 and rounds.sync(True) is True
    state = s.state_dict()
    assert state["received"] == 3 and not state["ended"]
    other = RemoteStream(stream_facts(real), order, server.source(0), Rounds())
    other.load_state_dict(state)
    assert other.state_dict() == state
    wrong = RemoteStream({**stream_facts(real), "n_tokens": 2048}, order, server.source(0), Rounds())
    with pytest.raises(ValueError, match="not a distributed run's"):
        wrong.load_state_dict(state)
    real.close()


def test_a_round_trained_here_but_not_anywhere_is_a_bug_caught():
    r = Rounds()
    r.note(1, False)
    assert r.sync(False) is False
    with pytest.raises(RuntimeError, match="round 1"):
        r.sync(True)

