"""Stages ``explain`` and ``score``: LLM explanations of sampled latents, and detection /
fuzzing scores of those explanations (with a random-explanation control).

Every LLM response goes through the response cache in ``<store>/.llm-cache`` (shared by all
artifacts and kept by ``store gc``), so an interrupted job resumes without repeating
finished calls. Output Parquet files, each written through its typed row schema in
:mod:`randsae.autointerp.schema` (docs/autointerp.md, "Output files"):

- explain: explanations.parquet (``ExplanationRow``) and usage.parquet (``UsageRow``)
- score: scores.parquet (``ScoreRow``, one row per judged example) and usage.parquet

A transient failure is never a finished artifact: when any call still fails in a way a retry
could fix (:func:`randsae.autointerp.clients.failure_class`), the job raises
:class:`~randsae.autointerp.outcomes.TransientLLMFailures` before writing anything, so nothing
is published and the rerun asks again for those calls only. The published artifact's
meta.json ``info`` says how many calls were made, cached, failed (by class) and truncated, and
the prompt-cache hit rate.

Execution settings (``execution.explain`` / ``execution.score``, never in a key):
``anthropic_batch`` (default true: the Message Batches API at half price; false: the Messages
API), ``llm_max_attempts`` and ``llm_retry_base_s`` (the client's retry policy) and
``batch_poll_s`` (seconds between batch status polls).
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow.parquet as pq

from randsae.stage import StageContext

log = logging.getLogger(__name__)

LLM_CACHE = ".llm-cache"


def client_kwargs(params: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments of the job's client from its execution settings (how, not what:
    none of them changes an answer, so none is in a key or in the response cache's key)."""
    from randsae.autointerp.retry import RetryPolicy

    if params["client"] != "anthropic":
        return {}
    retry = RetryPolicy(max_attempts=int(settings.get("llm_max_attempts", 6)),
                        base_delay=float(settings.get("llm_retry_base_s", 1.0)))
    return {"mode": "batch" if settings.get("anthropic_batch", True) else "messages", "retry": retry,
            "poll_interval": float(settings.get("batch_poll_s", 30.0))}


def _client(ctx: StageContext):
    from randsae.autointerp import default_client
    from randsae.devices import resolve_device

    kwargs: dict[str, Any] = {}
    if ctx.params["client"] == "local":
        # a packaged judge (SmolLM2 GGUF) is converted once per store, not once per job; the
        # judge runs on execution.device like every other model (resolved before it loads)
        kwargs = {"convert_dir": ctx.store.root / ".llm-models",
                  "device": resolve_device(ctx.settings.get("device", "auto"))}
    kwargs.update(client_kwargs(ctx.params, ctx.settings))
    return default_client({"autointerp": ctx.params}, cache_dir=ctx.store.root / LLM_CACHE, **kwargs)


def _account(ctx: StageContext, stage: str, summary: Any, client: Any | None) -> None:
    """Refuse to publish on a transient failure; otherwise record and log the summary."""
    from randsae.autointerp.outcomes import check_publishable, warnings_for

    log.info("%s %s: %d LLM calls (%d cached), %d failed (%d transient, %d answers, %d truncated)", stage,
             ctx.name, summary.calls, summary.cached, summary.failed, summary.transient, summary.answer,
             summary.truncated)
    check_publishable(f"{stage} {ctx.name}", summary)
    inner = getattr(client, "inner", client)
    notes = warnings_for(stage, summary, prompt_caching=bool(getattr(inner, "prompt_caching", False)))
    unpriced = getattr(inner, "unpriced_warning", None)
    if unpriced:
        notes.append(unpriced)
    for note in notes:
        log.warning("%s", note)
    ctx.info.update(summary.to_info())
    if notes:
        ctx.info["warnings"] = notes


def run_explain(ctx: StageContext) -> None:
    from randsae.autointerp import LLMExplainer, TokenListExplainer
    from randsae.autointerp.outcomes import summarize_explanations
    from randsae.autointerp.schema import (
        EXPLANATIONS_FILE,
        USAGE_FILE,
        ExplanationRow,
        UsageRow,
        explain_usage_rows,
        explanation_rows,
    )
    from randsae.examples import load_examples
    from randsae.rows import write_rows

    bundles = load_examples(ctx.inputs["examples"])
    client = None if ctx.params["explainer"] == "token_list" or not bundles else _client(ctx)
    explainer = TokenListExplainer() if client is None else LLMExplainer(client)
    results = explainer.explain(bundles) if bundles else []
    _account(ctx, "explain", summarize_explanations(results), client)
    write_rows(ExplanationRow, explanation_rows(results), ctx.workdir / EXPLANATIONS_FILE)
    write_rows(UsageRow, explain_usage_rows(results), ctx.workdir / USAGE_FILE)
    ctx.info.update({"n_latents": len(results), "n_ok": sum(r.ok for r in results),
                     "failures": sorted({r.reason for r in results if not r.ok})[:10]})


def run_score(ctx: StageContext) -> None:
    from randsae.autointerp import make_scorer, score_latents, scorer_class
    from randsae.autointerp.outcomes import summarize_scores
    from randsae.autointerp.schema import (
        EXPLANATIONS_FILE,
        SCORES_FILE,
        USAGE_FILE,
        ScoreRow,
        UsageRow,
        score_rows,
        score_usage_rows,
    )
    from randsae.examples import load_examples
    from randsae.rows import write_rows

    p = ctx.params
    bundles = load_examples(ctx.inputs["examples"])
    table = pq.read_table(ctx.inputs["explain"] / EXPLANATIONS_FILE).to_pylist()
    explanations = {r["latent"]: r["explanation"] for r in table if r["ok"] and r["explanation"]}
    scorer_cls = scorer_class(p["scorer"])
    scores = []
    client = None
    if bundles and explanations:
        client = _client(ctx) if scorer_cls.needs_client else None  # lexical: no LLM, no params for one
        scorer = make_scorer(p["scorer"], client, examples_per_prompt=p.get("examples_per_prompt", 5), seed=p["seed"])
        scores = score_latents(scorer, bundles, explanations, control=True, seed=p["seed"])
    _account(ctx, "score", summarize_scores(scores), client)
    rows = score_rows(scores)
    write_rows(ScoreRow, rows, ctx.workdir / SCORES_FILE)
    write_rows(UsageRow, score_usage_rows(scores), ctx.workdir / USAGE_FILE)
    ctx.info.update({"n_latents_scored": len({s.latent for s in scores}), "n_examples": len(rows),
                     "n_failed_examples": sum(not r.ok for r in rows)})
