"""Example queries over results.duckdb: each answers one question a user of the pipeline asks.

The README and docs/results.md show them; the tests run every one on a synthetic store and
require rows, so they stay valid as the schema evolves. Run one with
``randsae query "<sql>"`` or ``randsae.results.query(db_path, EXAMPLE_QUERIES[name])``.
Variants sort in display order through the database's ``variant_order(variant)`` macro
(:mod:`randsae.results.display`), never through a list written here.
"""

from __future__ import annotations

EXAMPLE_QUERIES: dict[str, str] = {
    # At a glance: each metric's effect (variant - trained) per random variant, CI, and where it separates.
    "headline": """
SELECT * FROM headline""",
    # The paper's claims tested on this run: statistic, CI and the verdict computed from them.
    "findings": """
SELECT id, verdict, round(value, 4) AS value, round(ci_lo, 4) AS ci_lo, round(ci_hi, 4) AS ci_hi, n, note
FROM findings""",
    # Did each SAE train close to convergence? What its last 20% of steps gained in training FVU.
    "convergence": """
SELECT s.tag, c.steps, round(c.fvu_before, 4) AS fvu_before, round(c.fvu_end, 4) AS fvu_end,
       round(c.improvement, 4) AS improvement, c.converged
FROM convergence c JOIN saes s USING (sae_key)
ORDER BY c.converged NULLS FIRST, c.improvement DESC, s.tag""",
    # How far is the pipeline? Planned vs built artifacts per stage.
    "progress": """
SELECT stage, version, planned, built
FROM progress ORDER BY stage_order""",
    # The paper's reconstruction metrics, per model, layer and variant (mean over seeds).
    "metrics_by_variant": """
SELECT model, layer, variant, count(*) AS n_seeds,
       round(avg(explained_variance), 4) AS explained_variance, round(avg(cossim), 4) AS cossim,
       round(avg(l0), 2) AS l0, round(avg(l1), 3) AS l1, round(avg(ce_loss_score), 4) AS ce_loss_score
FROM sae_metrics GROUP BY model, layer, variant ORDER BY model, layer, variant_order(variant), variant""",
    # Each variant's explained variance beside trained's, same layer, setting and seed.
    "explained_variance_vs_trained": """
SELECT model, layer, expansion, k, seed, variant, trained_value, variant_value, difference
FROM variant_vs_trained WHERE metric = 'explained_variance'
ORDER BY model, layer, variant_order(variant), variant, seed""",
    # Auto-interp AUROC (pooled per SAE, with bootstrap CI) by variant and scorer.
    "auroc_by_variant": """
SELECT model, layer, variant, scorer, explanation_source, seed,
       round(auroc, 3) AS auroc, round(auroc_lo, 3) AS lo, round(auroc_hi, 3) AS hi,
       round(balanced_accuracy, 3) AS balanced_accuracy, n, n_failed
FROM auroc ORDER BY model, layer, scorer, explanation_source, variant_order(variant), variant, seed""",
    # Does the own explanation beat a random other latent's explanation (the control)?
    "own_vs_control_explanation": """
SELECT o.model, o.layer, o.variant, o.seed, o.scorer,
       round(o.auroc, 3) AS own_auroc, round(c.auroc, 3) AS control_auroc, round(o.auroc - c.auroc, 3) AS gain
FROM auroc o JOIN auroc c USING (sae_key, scorer)
WHERE o.explanation_source = 'own' AND c.explanation_source = 'control'
ORDER BY o.model, o.layer, o.scorer, variant_order(o.variant), o.variant""",
    # The headline: which metrics tell trained from which random variant, per layer?
    "separating_metrics": """
SELECT model, layer, level, metric, variant, n_trained, n_variant,
       round(trained_value, 4) AS trained, round(variant_value, 4) AS variant_value,
       round(difference, 4) AS difference, round(p_value, 4) AS p_value, round(auroc, 3) AS auroc
FROM discriminability WHERE separated
ORDER BY model, layer, metric, variant_order(variant), variant""",
    # Every comparison of one metric, significant or not (here token entropy, per latent).
    "token_entropy_discriminability": """
SELECT model, layer, variant, n_trained, n_variant, round(trained_value, 3) AS trained,
       round(variant_value, 3) AS variant_value, round(difference_lo, 3) AS diff_lo,
       round(difference_hi, 3) AS diff_hi, round(auroc, 3) AS auroc, p_value, separated
FROM discriminability WHERE metric = 'token_entropy'
ORDER BY model, layer, variant_order(variant), variant""",
    # The paper's abstractness trend: mean token entropy of sampled latents by depth.
    "token_entropy_by_layer": """
SELECT model, variant, layer, count(*) AS n_latents, round(avg(token_entropy), 3) AS mean_token_entropy,
       round(avg(CAST(single_token AS DOUBLE)), 3) AS frac_single_token
FROM latents WHERE sampled AND isfinite(token_entropy)
GROUP BY model, variant, layer ORDER BY model, variant_order(variant), variant, layer""",
    # Which explanations failed, and why?
    "failed_explanations": """
SELECT model, variant, layer, reason, count(*) AS n
FROM explanations WHERE NOT ok GROUP BY ALL ORDER BY n DESC""",
    # What did the LLM calls cost, how much came from the response cache, and how much of the input
    # did the provider's prompt cache serve (cache reads over all input tokens)?
    "llm_cost": """
SELECT artifact_stage, client, llm_model, count(*) AS calls,
       count(*) FILTER (WHERE cached) AS cached_calls,
       sum(input_tokens) AS input_tokens, sum(cache_read_tokens) AS cache_read_tokens,
       sum(output_tokens) AS output_tokens, round(sum(cost_usd), 4) AS cost_usd,
       round(sum(cache_read_tokens) / nullif(sum(input_tokens + cache_read_tokens + cache_write_tokens), 0), 3)
         AS prompt_cache_hit_rate
FROM llm_usage GROUP BY ALL ORDER BY artifact_stage, client, llm_model""",
    # The best- and worst-explained latents of trained SAEs, with their explanations.
    "best_explained_latents": """
SELECT la.model, la.layer, la.seed, la.latent, round(la.auroc, 3) AS detection_auroc, e.explanation
FROM latent_auroc la
JOIN explanations e ON e.sae_key = la.sae_key AND e.latent = la.latent
WHERE la.variant = 'trained' AND la.scorer = 'detection' AND la.explanation_source = 'own' AND e.ok
ORDER BY la.auroc DESC NULLS LAST LIMIT 20""",
    # Where in the store is each built SAE?
    "sae_paths": """
SELECT s.name, a.path, a.created
FROM saes s JOIN artifacts a ON a.key = s.sae_key
ORDER BY s.model, s.layer, variant_order(s.variant), s.variant, s.seed""",
}
