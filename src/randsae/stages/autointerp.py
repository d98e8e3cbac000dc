"""Stages ``explain`` and ``score``: LLM explanations of sampled latents, and detection /
fuzzing scores of those explanations (with a random-explanation control).

Every LLM response goes through the response cache in ``<store>/.llm-cache`` (shared by all
artifacts and kept by ``store gc``), so an interrupted job resumes without repeating
finished calls. Output Parquet schemas (docs/results.md):

- explain: explanations.parquet (latent, explanation, ok, reason, explainer, client, model,
  input_tokens, output_tokens, cache_read_tokens, cost_usd) and usage.parquet
- score: scores.parquet (one row per judged example) and usage.parquet
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from randsae.stages import StageContext

LLM_CACHE = ".llm-cache"
USAGE_COLUMNS = ("stage", "latent", "client", "model", "input_tokens", "output_tokens",
                 "cache_read_tokens", "cache_write_tokens", "cost_usd", "cached")


def _write(rows: list[dict[str, Any]], path: Path, columns: tuple[str, ...] | None = None) -> None:
    if columns is not None:
        rows = [{c: r.get(c) for c in columns} for r in rows]
    table = pa.Table.from_pylist(rows) if rows else pa.table({c: pa.array([], pa.null()) for c in (columns or ())})
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def _client(ctx: StageContext):
    from randsae.autointerp import default_client

    # a packaged judge (SmolLM2 GGUF) is converted once per store, not once per job
    kwargs: dict[str, Any] = {"convert_dir": ctx.store.root / ".llm-models"} if ctx.params["client"] == "local" else {}
    return default_client({"autointerp": ctx.params}, cache_dir=ctx.store.root / LLM_CACHE, **kwargs)


def _usage_row(stage: str, latent: int, client: str, model: str, usage: Any, cost: float | None, cached: bool) -> dict[str, Any]:
    return {"stage": stage, "latent": latent, "client": client, "model": model,
            "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "cache_read_tokens": usage.cache_read_tokens, "cache_write_tokens": usage.cache_write_tokens,
            "cost_usd": cost, "cached": cached}


def run_explain(ctx: StageContext) -> None:
    from randsae.autointerp import LLMExplainer, TokenListExplainer
    from randsae.examples import load_examples

    bundles = load_examples(ctx.inputs["examples"])
    explainer = TokenListExplainer() if ctx.params["explainer"] == "token_list" else LLMExplainer(_client(ctx))
    results = explainer.explain(bundles) if bundles else []
    rows = [{"latent": r.latent, "explanation": r.explanation, "ok": r.ok, "reason": r.reason,
             "explainer": r.explainer, "client": r.client, "model": r.model,
             "input_tokens": r.usage.input_tokens, "output_tokens": r.usage.output_tokens,
             "cache_read_tokens": r.usage.cache_read_tokens, "cost_usd": r.cost_usd} for r in results]
    _write(rows, ctx.workdir / "explanations.parquet",
           ("latent", "explanation", "ok", "reason", "explainer", "client", "model",
            "input_tokens", "output_tokens", "cache_read_tokens", "cost_usd"))
    usage = [_usage_row("explain", r.latent, r.client, r.model, r.usage, r.cost_usd, r.cached) for r in results]
    _write(usage, ctx.workdir / "usage.parquet", USAGE_COLUMNS)
    ctx.info.update({"n_latents": len(results), "n_ok": sum(r.ok for r in results),
                     "failures": sorted({r.reason for r in results if not r.ok})[:10]})


def run_score(ctx: StageContext) -> None:
    from randsae.autointerp import DetectionScorer, FuzzingScorer, score_latents
    from randsae.examples import load_examples

    p = ctx.params
    bundles = load_examples(ctx.inputs["examples"])
    table = pq.read_table(ctx.inputs["explain"] / "explanations.parquet").to_pylist()
    explanations = {r["latent"]: r["explanation"] for r in table if r["ok"] and r["explanation"]}
    scorer_cls = DetectionScorer if p["scorer"] == "detection" else FuzzingScorer
    scores = []
    if bundles and explanations:
        scorer = scorer_cls(_client(ctx), examples_per_prompt=p["examples_per_prompt"], seed=p["seed"])
        scores = score_latents(scorer, bundles, explanations, control=True, seed=p["seed"])
    rows = [{"latent": e.latent, "scorer": e.scorer, "explanation_source": e.explanation_source,
             "explanation_latent": e.explanation_latent, "example_id": e.index, "activating": e.label,
             "quantile": e.quantile, "probability": e.probability, "prediction": e.prediction,
             "ok": e.ok, "reason": e.reason, "client": e.client, "model": e.model}
            for s in scores for e in s.examples]
    _write(rows, ctx.workdir / "scores.parquet",
           ("latent", "scorer", "explanation_source", "explanation_latent", "example_id", "activating",
            "quantile", "probability", "prediction", "ok", "reason", "client", "model"))
    usage = [_usage_row("score", s.latent, s.client, s.model, s.usage, s.cost_usd, False) for s in scores]
    _write(usage, ctx.workdir / "usage.parquet", USAGE_COLUMNS)
    ctx.info.update({"n_latents_scored": len({s.latent for s in scores}), "n_examples": len(rows),
                     "n_failed_examples": sum(not r["ok"] for r in rows)})
