"""Stage `sae_metrics` on a tiny model: the row equals independent hooked full forwards over
the eval split, with position 0 kept clean in both the SAE and the zero branch and not counted
(drop_first_position, the default), and the control variant's noise seeded per sequence (the
stage's batches of 3 give the reference's single batch). The SAEs of one hookpoint share one
job, and each one's files are bit for bit those of a job measuring it alone."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from _helpers import tiny_config

from randsae import zarr_io
from randsae.config import normalise
from randsae.models.arch import get_blocks
from randsae.models.artifact import load_model_artifact
from randsae.models.variants import control_row_seeds, control_seed
from randsae.plan import build_plan
from randsae.sae import SaeConfig, TopKSAE
from randsae.stages import build, build_group, stage_def
from randsae.store import Store


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("metrics")
    cfg = tiny_config(tiny_model_dir, tmp / "store")
    cfg["variants"] = ["trained", "control"]
    plan = build_plan(normalise(cfg))
    store = Store(tmp / "store")
    for a in plan.stage("model") + [plan.by_name["tokens/tiny/kjv/eval"]]:
        build(a.spec(), store)
    for a in plan.stage("sae"):
        with store.publish(a.spec()) as b:  # stands in for the sae stage: random weights
            sae = TopKSAE.initialised(32, 64, 4, seed=3)
            sae.config = SaeConfig(expansion_factor=2, k=4)
            sae.save(b.workdir)
            (b.workdir / "train_summary.json").write_text(json.dumps({"dead_fraction": 0.0}))
    rows = {}
    for a in plan.stage("sae_metrics"):
        path = build(a.spec(), store, {"batch_size": 3})
        rows[a.labels["variant"]] = (a.spec(), pq.read_table(path / "metrics.parquet").to_pylist()[0])
    return store, rows


def reference(store, spec):
    """CE of the three branches from full forwards of all eval sequences in one batch."""
    loaded = load_model_artifact(store.root / spec["inputs"]["model"])
    sae = TopKSAE.load(store.root / spec["inputs"]["sae"])
    tokens = torch.from_numpy(np.asarray(zarr_io.open_array(store.root / spec["inputs"]["tokens"] / "tokens.zarr")[:])).long()
    layer = spec["params"]["layer"]

    def run(fill):
        def hook(_m, _a, out):
            h = out[0] if isinstance(out, tuple) else out
            new = torch.cat((h[:, :1], fill(h[:, 1:])), dim=1)  # position 0 stays clean
            return (new, *out[1:]) if isinstance(out, tuple) else new

        handle = get_blocks(loaded.model)[layer].register_forward_hook(hook) if fill else None
        try:
            with torch.no_grad(), control_seed(loaded.model, control_row_seeds(loaded.info.get("seed") or 0, 0, tokens.shape[0])):
                logits = loaded.model(input_ids=tokens).logits
        finally:
            if handle is not None:
                handle.remove()
        return F.cross_entropy(logits[:, 1:-1].reshape(-1, logits.shape[-1]).double(), tokens[:, 2:].reshape(-1)).item()

    def sae_fill(h):
        with torch.no_grad():
            v, i = sae.encode(h.reshape(-1, h.shape[-1]))
            return sae.decode(v, i).reshape(h.shape)

    return {"ce_clean": run(None), "ce_sae": run(sae_fill), "ce_zero": run(torch.zeros_like)}, tokens.shape


@pytest.mark.parametrize("variant", ["trained", "control"])
def test_row_equals_hooked_full_forwards(built, variant):
    store, rows = built
    spec, row = rows[variant]
    assert spec["params"]["drop_first_position"] is True
    ref, (n_seq, ctx) = reference(store, spec)
    assert row["n_tokens"] == n_seq * (ctx - 1)  # position 0 left out of the reconstruction stats
    assert row["ce_n_tokens"] == n_seq * (ctx - 2)  # and its prediction not counted
    for name, value in ref.items():
        assert row[name] == pytest.approx(value, rel=1e-5), name
    assert row["ce_loss_score"] == pytest.approx((ref["ce_zero"] - ref["ce_sae"]) / (ref["ce_zero"] - ref["ce_clean"]), rel=1e-4)


def test_control_row_differs_from_trained(built):
    _, rows = built
    # the tiny model is untrained, so both are near ln(vocab); the noise still moves the CE
    assert abs(rows["control"][1]["ce_clean"] - rows["trained"][1]["ce_clean"]) > 1e-4


def test_the_row_is_bitwise_the_same_for_any_batch_size(built, tmp_path):
    """The batch size is an execution setting: statistics are summed one sequence at a time, so
    batches of 1 and of 5 give the batches-of-3 row bit for bit (the old per-batch sums did not)."""
    store, rows = built
    spec, row3 = rows["control"]
    for batch_size in (1, 5):
        other = Store(tmp_path / f"b{batch_size}")
        _link_inputs(spec, store, other)
        path = build(spec, other, {"batch_size": batch_size})
        row = pq.read_table(path / "metrics.parquet").to_pylist()[0]
        differ = {k: (row[k], row3[k]) for k in row if not _same(row[k], row3[k])}
        assert not differ, f"batch size {batch_size}: {differ}"


def _same(a, b) -> bool:
    """Equal bit for bit, NaN equal to NaN (a metric undefined on this tiny model)."""
    return a == b or (isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b))


def _link_inputs(spec, src_store, dst_store) -> None:
    """The same input artifacts in another store, copied by hard link."""
    for ref in spec["inputs"].values():
        src = src_store.root / ref
        for f in src.rglob("*"):
            if f.is_file():
                dst = dst_store.root / ref / f.relative_to(src)
                dst.parent.mkdir(parents=True, exist_ok=True)
                if not dst.exists():
                    dst.hardlink_to(f)


def _three_seed_store(root, model_dir, drop_first_position: bool):
    """Store with the inputs of 3 SAEs (seeds 0-2, different random weights) per variant."""
    cfg = tiny_config(model_dir, root)
    cfg["variants"] = ["trained", "control"]
    cfg["sae"]["seeds"] = [0, 1, 2]
    cfg["activations"] = {"drop_first_position": drop_first_position}
    plan = build_plan(normalise(cfg))
    store = Store(root)
    for a in plan.stage("model") + [plan.by_name["tokens/tiny/kjv/eval"]]:
        build(a.spec(), store)
    for a in plan.stage("sae"):
        with store.publish(a.spec()) as b:
            sae = TopKSAE.initialised(32, 64, 4, seed=10 + a.labels["seed"])
            sae.config = SaeConfig(expansion_factor=2, k=4)
            sae.save(b.workdir)
            (b.workdir / "train_summary.json").write_text(json.dumps({"dead_fraction": 0.0}))
    return plan, store


def test_the_plan_groups_the_saes_of_one_hookpoint(tmp_path, tiny_model_dir):
    cfg = tiny_config(tiny_model_dir, tmp_path / "store", **{"sae.expansion": [2, 4], "sae.seeds": [0, 1, 2]})
    cfg["variants"] = ["trained", "control"]
    plan = build_plan(normalise(cfg))
    arts = plan.stage("sae_metrics")
    groups: dict[str, list] = {}
    for a in arts:
        groups.setdefault(stage_def("sae_metrics").group(a), []).append(a)
    assert len(arts) == 12 and len(groups) == 2  # 2 variants x (2 expansions x 3 seeds)
    for members in groups.values():
        assert len({a.labels["variant"] for a in members}) == 1 and len({a.inputs["sae"] for a in members}) == 6


@pytest.mark.parametrize("drop_first_position", [True, False])
def test_a_group_job_writes_each_sae_s_files_bit_for_bit_as_a_job_of_that_sae_alone(
    tmp_path, tiny_model_dir, drop_first_position
):
    plan, store = _three_seed_store(tmp_path / "group", tiny_model_dir, drop_first_position)
    specs = [a.spec() for a in plan.stage("sae_metrics") if a.labels["variant"] == "control"]
    assert len(specs) == 3
    build_group(specs, store, {"batch_size": 3})
    rows = []
    for i, spec in enumerate(specs):
        alone = Store(tmp_path / f"alone{i}")
        _link_inputs(spec, store, alone)
        build(spec, alone, {"batch_size": 3})
        for name in ("metrics.parquet", "firing_counts.parquet"):
            got = (store.path("sae_metrics", spec["key"]) / name).read_bytes()
            assert got == (alone.path("sae_metrics", spec["key"]) / name).read_bytes(), (spec["name"], name)
        rows.append(pq.read_table(store.path("sae_metrics", spec["key"]) / "metrics.parquet").to_pylist()[0])
        assert store.meta("sae_metrics", spec["key"])["info"]["saes_in_job"] == 3
    # three different SAEs: three different rows (not one row written three times) ...
    assert len({r["fvu"] for r in rows}) == 3 and len({r["ce_sae"] for r in rows}) == 3
    # ... over one clean and one zero-ablated pass
    assert len({r["ce_clean"] for r in rows}) == 1 and len({r["ce_zero"] for r in rows}) == 1


def test_a_group_of_different_hookpoints_is_refused(tmp_path, tiny_model_dir):
    plan, store = _three_seed_store(tmp_path / "s", tiny_model_dir, True)
    trained, control = (next(a.spec() for a in plan.stage("sae_metrics") if a.labels["variant"] == v)
                        for v in ("trained", "control"))
    with pytest.raises(ValueError, match="only SAEs of one hookpoint share a job"):
        build_group([trained, control], store)
    assert not store.exists("sae_metrics", trained["key"]) and not store.exists("sae_metrics", control["key"])
