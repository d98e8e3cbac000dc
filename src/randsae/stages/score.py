"""Stage ``score``: detection or fuzzing scores of each explanation, with a random-explanation
control (implementation shared with ``explain`` in :mod:`randsae.stages.autointerp`)."""

from __future__ import annotations

from collections.abc import Iterator

from randsae.enums import LEXICAL
from randsae.stage import (
    Config,
    OutputFile,
    Planned,
    PlanSoFar,
    Resources,
    StageContext,
    StageDef,
    group_by_labels,
)
from randsae.stages.explain import calls_api, llm_params


def expand(cfg: Config, so_far: PlanSoFar) -> Iterator[Planned]:
    """Per explanation set: one artifact per configured scorer."""
    ai = cfg["autointerp"]
    for explain in so_far.all("explain"):
        examples = so_far.find("examples", **explain.labels)
        for scorer in ai["scorers"]:
            # the lexical scorer asks no LLM and has no prompts: its key names neither a client,
            # a model nor examples_per_prompt, so switching the LLM reruns no lexical score
            llm = {} if scorer == LEXICAL else {**llm_params(ai), "examples_per_prompt": ai["examples_per_prompt"]}
            params = {**llm, "scorer": scorer, "seed": ai["seed"]}
            yield Planned(f"{explain.name.removeprefix('explain/')}/{scorer}", params,
                          {"explain": explain, "examples": examples}, {**explain.labels, "scorer": scorer})


def run(ctx: StageContext) -> None:
    from randsae.stages.autointerp import run_score

    run_score(ctx)


STAGE = StageDef(
    name="score",
    version=1,
    doc="detection or fuzzing scores of the explanations, with a random-explanation control",
    inputs={"explain": "explain", "examples": "examples"},
    expand=expand,
    resources=Resources(mem_mb=16000, runtime=240),
    outputs=(
        OutputFile("scores.parquet", "one row per judged example", "randsae.autointerp.schema:ScoreRow"),
        OutputFile("usage.parquet", "one row per LLM call", "randsae.autointerp.schema:UsageRow"),
    ),
    run=run,
    # one job per model variant builds its SAEs' artifacts one after another: each is small,
    # and a job per SAE would spend most of its time starting up
    group=group_by_labels("model", "variant"),
    local=calls_api,
)
