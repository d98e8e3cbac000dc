"""Stage ``explain``: an explanation of each sampled latent (implementation shared with
``score`` in :mod:`randsae.stages.autointerp`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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


def llm_params(ai: dict[str, Any]) -> dict[str, Any]:
    """Parameters of explain/score: explainer, client and the model of *that* client only, so
    editing the other client's model reruns nothing."""
    anthropic = ai["client"] == "anthropic"
    return {"explainer": ai["explainer"], "client": ai["client"],
            "anthropic_model": ai["anthropic_model"] if anthropic else None,
            "local_model": None if anthropic else ai["local_model"]}


def explain_params(ai: dict[str, Any]) -> dict[str, Any]:
    """The explain key's parameters. The token-list explainer asks no LLM, so its key names no
    client: switching the LLM reruns neither it nor the lexical scores of its explanations."""
    return {"explainer": "token_list"} if ai["explainer"] == "token_list" else llm_params(ai)


def calls_api(cfg: Config) -> bool:
    """Compute nodes often have no internet: calls to the Anthropic API run on the submit host."""
    return cfg["autointerp"]["client"] == "anthropic"


def expand(cfg: Config, so_far: PlanSoFar) -> Iterator[Planned]:
    for examples in so_far.all("examples"):
        yield Planned(examples.name.removeprefix("examples/"), explain_params(cfg["autointerp"]),
                      {"examples": examples}, dict(examples.labels))


def run(ctx: StageContext) -> None:
    from randsae.stages.autointerp import run_explain

    run_explain(ctx)


STAGE = StageDef(
    name="explain",
    version=1,
    doc="an explanation of each sampled latent (LLM or token list)",
    inputs={"examples": "examples"},
    expand=expand,
    resources=Resources(mem_mb=16000, runtime=240),
    outputs=(
        OutputFile("explanations.parquet", "one row per sampled latent", "randsae.autointerp.schema:ExplanationRow"),
        OutputFile("usage.parquet", "one row per LLM call", "randsae.autointerp.schema:UsageRow"),
    ),
    run=run,
    # one job per model variant builds its SAEs' artifacts one after another: each is small,
    # and a job per SAE would spend most of its time starting up
    group=group_by_labels("model", "variant"),
    local=calls_api,
)
