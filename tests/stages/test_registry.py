"""The stage declarations: discovered from the package, in input order, each read by the plan,
the rules and the CLI from one place."""

from __future__ import annotations

import pkgutil

import pytest
from _helpers import tiny_config

import randsae.stages as stages_pkg
from randsae.config import normalise
from randsae.plan import Plan, build_plan, stage_names
from randsae.stage import Artifact, OutputFile, Planned, Resources, StageDef
from randsae.stages import stage_def, stage_defs


def test_every_stage_module_declares_one_stage_and_inputs_come_first():
    defs = stage_defs()
    assert list(defs) == list(stage_names())
    assert set(defs) == {"model", "tokens", "activations", "sae", "sae_metrics", "latents", "examples", "explain", "score"}
    for i, (name, d) in enumerate(defs.items()):
        assert d.name == name and d.version >= 1 and d.outputs and d.doc
        for upstream in d.inputs.values():
            assert upstream == name or list(defs).index(upstream) < i, f"{name} reads {upstream}, declared later"
    declaring = [m.name for m in pkgutil.iter_modules(stages_pkg.__path__)
                 if isinstance(getattr(__import__(f"randsae.stages.{m.name}", fromlist=["STAGE"]), "STAGE", None), StageDef)]
    assert sorted(declaring) == sorted(defs)


def test_unknown_stage_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown stage 'nope'.*known: model, tokens"):
        stage_def("nope")


def test_a_runner_and_a_group_runner_are_exclusive():
    kw = dict(name="x", version=1, doc="x", inputs={}, expand=lambda cfg, so_far: [],
              resources=Resources(1, 1), outputs=(OutputFile("f", "f"),))
    with pytest.raises(ValueError, match="exactly one of run and run_group"):
        StageDef(**kw)
    with pytest.raises(ValueError, match="run_group needs group"):
        StageDef(**kw, run_group=lambda ctxs: None)
    # a per-artifact runner may be grouped: one job builds the members one after another
    assert StageDef(**kw, run=lambda ctx: None, group=lambda a: "g").group is not None


def test_plan_artifacts_carry_labels_and_the_declared_version(tmp_path):
    plan = build_plan(normalise(tiny_config(tmp_path / "m", tmp_path / "s")))
    sae = plan.by_name["sae/tiny/rerandomized/L1/x2-k4/s0"]
    assert sae.labels == {"model": "tiny", "variant": "rerandomized", "layer": 1, "expansion": 2, "k": 4, "seed": 0}
    assert sae.spec()["version"] == stage_def("sae").version
    score = plan.stage("score")[0]
    assert score.labels["scorer"] in ("detection", "fuzzing") and score.labels["layer"] == 1


def test_plan_rejects_an_input_the_declaration_does_not_name(tmp_path, monkeypatch):
    import dataclasses

    cfg = normalise(tiny_config(tmp_path / "m", tmp_path / "s"))
    decl = stage_defs()["explain"]

    def bad_expand(cfg, so_far):
        for ex in so_far.all("examples"):
            yield Planned(ex.name, {}, {"examples": ex, "tokens": so_far.all("tokens")[0]}, dict(ex.labels))

    monkeypatch.setitem(stage_defs(), "explain", dataclasses.replace(decl, expand=bad_expand))
    with pytest.raises(RuntimeError, match="stage explain planned .* with inputs"):
        build_plan(cfg)


def test_plan_is_topological():
    plan = build_plan(normalise(tiny_config("/nonexistent/m", "/tmp/s")))
    seen: set[str] = set()
    for a in plan:
        assert set(a.inputs.values()) <= seen, f"{a.name} comes before an input"
        seen.add(a.key)
    assert isinstance(plan, Plan) and all(isinstance(a, Artifact) for a in plan)


def test_readers_ask_for_declared_outputs():
    from randsae.stages import declared_output

    assert declared_output("sae_metrics", "metrics.parquet").schema == "randsae.metrics.schema:SaeMetricsRow"
    with pytest.raises(ValueError, match="stage score declares no output 'score.parquet'"):
        declared_output("score", "score.parquet")


def test_declared_row_schemas_resolve():
    import importlib

    for d in stage_defs().values():
        for out in d.outputs:
            if out.schema:
                module, attr = out.schema.split(":")
                assert hasattr(importlib.import_module(module), attr), out.schema


def test_per_sae_stages_share_one_job_per_model_variant(tmp_path):
    """latents (shared forward), examples, explain and score (one job building its members one
    after another): one group per model variant, whatever the layers and seeds."""
    cfg = tiny_config(tmp_path / "m", tmp_path / "s", **{"models.tiny.layers": [0, 1], "sae.seeds": [0, 1, 2]})
    plan = build_plan(normalise(cfg))
    for name in ("latents", "examples", "explain", "score"):
        arts = plan.stage(name)
        groups: dict[str, set[str]] = {}
        for a in arts:
            groups.setdefault(stage_def(name).group(a), set()).add(a.labels["variant"])
        assert len(arts) >= 12 and len(groups) == len(cfg["variants"]), name
        assert all(len(v) == 1 for v in groups.values()), name
