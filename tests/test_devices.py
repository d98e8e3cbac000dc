"""execution.device: resolve_device's answers and errors, and every torch stage honouring it.

On a machine without CUDA (CI, the project's CPU box) an execution.device of 'cuda' must stop
each stage that runs torch with a DeviceError naming the setting, before it loads a model or an
SAE and without publishing anything. On a machine with CUDA (benchmarks/gpu_check.sh) the same
stages run on the GPU and agree with the CPU run.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from _helpers import tiny_config

from randsae import stages
from randsae.autointerp import local_client
from randsae.config import normalise
from randsae.devices import DeviceError, resolve_device
from randsae.models import artifact
from randsae.plan import build_plan
from randsae.sae import model as sae_model
from randsae.store import Store

NO_CUDA = not torch.cuda.is_available()
needs_no_cuda = pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA: 'cuda' is valid here")
needs_cuda = pytest.mark.skipif(NO_CUDA, reason="needs a CUDA device (benchmarks/gpu_check.sh)")
CPU = {"device": "cpu", "batch_size": 4}
# The stages' inputs, in pipeline order, for the stage under test (a stage's own artifact must
# not exist yet: an artifact already in the store is never rebuilt, so its runner never runs).
TORCH_STAGES = ["activations", "sae", "sae_metrics", "latents", "score"]


# --- resolve_device -----------------------------------------------------------------------------


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device() == resolve_device("auto")


@pytest.mark.parametrize("bad", ["gpu", "CUDA", "cuda:", "cuda:x", "mps", " cpu", ""])
def test_malformed_settings_name_the_key_and_the_allowed_values(bad):
    with pytest.raises(DeviceError, match=r"^execution\.device: .* is not one of auto, cpu, cuda, cuda:N"):
        resolve_device(bad)


@needs_no_cuda
@pytest.mark.parametrize("setting", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_a_device_error(setting):
    with pytest.raises(DeviceError, match=rf"^execution\.device: '{setting}' but torch sees no CUDA device"):
        resolve_device(setting)


@needs_cuda
def test_cuda_index_past_the_last_device():
    n = torch.cuda.device_count()
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(DeviceError, match=rf"'cuda:{n}' but this machine has {n} CUDA devices"):
        resolve_device(f"cuda:{n}")


# --- the stages -----------------------------------------------------------------------------------


def tiny_plan(tiny_model_dir, store_dir):
    cfg = tiny_config(tiny_model_dir, store_dir)
    cfg["variants"] = ["trained"]
    cfg["autointerp"]["scorers"] = ["detection"]  # an LLM scorer: the score stage loads a judge
    return build_plan(normalise(cfg))


def build_stage(plan, store, stage, settings):
    """Build every artifact of ``stage`` in the plan (grouped stages as one group)."""
    specs = [a.spec() for a in plan.stage(stage)]
    if stages.stage_def(stage).run_group is not None:
        stages.build_group(specs, store, settings)
    else:
        for spec in specs:
            stages.build(spec, store, settings)


def build_inputs_of(plan, store, stage, settings):
    """Build the pipeline up to (not including) ``stage``."""
    for name in ["model", "tokens", *TORCH_STAGES[: TORCH_STAGES.index(stage)]]:
        if name == "score":
            continue
        build_stage(plan, store, name, settings)
        if name == "latents":  # score reads examples and explanations, built from the latents
            build_stage(plan, store, "examples", settings)
            build_stage(plan, store, "explain", settings)


@pytest.fixture(scope="module")
def cpu_store(tmp_path_factory, tiny_model_dir):
    """A plan and an empty store; the tests build what they need into it on the CPU."""
    root = tmp_path_factory.mktemp("devices") / "store"
    return tiny_plan(tiny_model_dir, root), Store(root)


@needs_no_cuda
def test_each_torch_stage_refuses_cuda_before_loading_anything(cpu_store, monkeypatch):
    plan, store = cpu_store
    refused = []
    for stage in TORCH_STAGES:
        # Inputs on the CPU (what earlier iterations left unbuilt), loaders armed only for the
        # stage under test.
        build_inputs_of(plan, store, stage, CPU)
        with monkeypatch.context() as m:

            def must_not_load(*args, _stage=stage, **kwargs):
                raise AssertionError(f"{_stage}: a model was loaded before execution.device was checked")

            m.setattr(artifact, "load_model_artifact", must_not_load)
            m.setattr(sae_model.TopKSAE, "load", must_not_load)
            m.setattr(local_client, "LocalClient", must_not_load)
            with pytest.raises(DeviceError, match=r"^execution\.device: 'cuda' but torch sees no CUDA device"):
                build_stage(plan, store, stage, {"device": "cuda", "batch_size": 4})
        assert not any(store.exists(stage, a.key) for a in plan.stage(stage)), f"{stage} published"
        refused.append(stage)
    assert refused == TORCH_STAGES


def test_cpu_setting_is_recorded_by_the_stages_that_record_it(cpu_store):
    plan, store = cpu_store
    build_inputs_of(plan, store, "score", CPU)  # no-op where the test above already built them
    for stage in ("activations", "latents"):
        for a in plan.stage(stage):
            assert store.meta(stage, a.key)["info"]["device"] == "cpu"


# --- on a GPU -------------------------------------------------------------------------------------


@needs_cuda
def test_stages_run_on_cuda_and_agree_with_the_cpu(tmp_path, tiny_model_dir):
    from randsae.kernels import KernelSelfCheckWarning

    from randsae import zarr_io

    plans, stores = {}, {}
    for dev in ("cpu", "cuda"):
        plans[dev] = tiny_plan(tiny_model_dir, tmp_path / dev / "store")
        stores[dev] = Store(tmp_path / dev / "store")
        settings = {"device": dev, "batch_size": 4}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for stage in ("model", "tokens", "activations", "sae", "sae_metrics", "latents"):
                build_stage(plans[dev], stores[dev], stage, settings)
        assert not [w for w in caught if issubclass(w.category, KernelSelfCheckWarning)]
    plan, cpu, gpu = plans["cpu"], stores["cpu"], stores["cuda"]
    for a in plan.stage("activations"):
        assert gpu.meta("activations", a.key)["info"]["device"].startswith("cuda")
        read = [zarr_io.read_rows(zarr_io.open_array(s.path("activations", a.key) / "acts.zarr"), 0, None)
                for s in (cpu, gpu)]
        torch.testing.assert_close(read[1].float(), read[0].float(), rtol=2**-6, atol=1e-3)
    for a in plan.stage("sae"):  # trained through the Triton kernels on CUDA (execution.kernels auto)
        fvu = [json.loads((s.path("sae", a.key) / "train_summary.json").read_text())["fvu"] for s in (cpu, gpu)]
        assert abs(fvu[0] - fvu[1]) < 0.05, fvu  # same data, init and schedule: float drift only
    for a in plan.stage("sae_metrics"):
        rows = [s.meta("sae_metrics", a.key)["info"]["fvu"] for s in (cpu, gpu)]
        assert abs(rows[0] - rows[1]) < 0.05, rows
    for a in plan.stage("latents"):
        assert gpu.meta("latents", a.key)["info"]["device"].startswith("cuda")


@needs_cuda
def test_rng_states_restore_from_a_checkpoint_loaded_onto_cuda(tmp_path):
    # The trainer resumes with load_checkpoint(map_location=<its device>), which moves the saved
    # RNG state tensors to the GPU; restoring them must still work (the setters take CPU tensors).
    import numpy as np

    from randsae.sae import checkpoint as ckpt

    states = ckpt.capture_rng_states()
    expected = (torch.rand(3), np.random.rand(3), torch.rand(3, device="cuda"))
    path = ckpt.save_checkpoint(tmp_path, 1, {"rng": states})
    loaded = ckpt.load_checkpoint(path, map_location="cuda")
    assert loaded["rng"]["torch"].is_cuda  # the situation a resumed CUDA run is in
    ckpt.restore_rng_states(loaded["rng"])
    again = (torch.rand(3), np.random.rand(3), torch.rand(3, device="cuda"))
    assert torch.equal(again[0], expected[0]) and np.array_equal(again[1], expected[1])
    assert torch.equal(again[2], expected[2])
