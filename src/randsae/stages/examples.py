"""Stage ``examples``: sample latents of one SAE and build their explainer, test and
non-activating examples from its latent cache (rules: :mod:`randsae.examples`, docs/latents.md).

Inputs (roles): ``latents`` (latents artifact), ``tokens`` (the interp split the cache was
computed on), ``tokenizer`` (the trained model artifact: its tokenizer decodes the tokens).

Output::

    examples.json    JSON list of randsae.autointerp.types.LatentExamples, one sampled latent per
                     line; its meta holds the latent's stats, abstractness and any shortfall
    latents.parquet  one row per latent of the SAE: firing stats, abstractness, eligible, sampled

meta.json ``info`` records how many latents were eligible and sampled, and any warning (no
eligible latent, fewer than asked). Neither case is an error.

Execution setting (config ``execution.examples``, not in the key): ``scan_budget`` (index
entries scanned at once, default 2**22, about 100 bytes of memory each).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from randsae.enums import TRAINED
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

log = logging.getLogger("randsae")


#: The autointerp keys that determine which latents and examples are drawn.
PARAM_KEYS = ("n_latents", "min_activations", "window", "explainer_examples", "explainer_sampling",
              "test_examples", "n_quantiles", "non_activating", "seed")


def expand(cfg: Config, so_far: PlanSoFar) -> Iterator[Planned]:
    """Per latent cache: the sampled latents' examples."""
    params = {k: cfg["autointerp"][k] for k in PARAM_KEYS}
    for latents in so_far.all("latents"):
        lab = latents.labels
        inputs = {"latents": latents, "tokens": so_far.find("tokens", model=lab["model"], split="interp"),
                  "tokenizer": so_far.find("model", model=lab["model"], variant=TRAINED)}
        yield Planned(latents.name.removeprefix("latents/"), dict(params), inputs, dict(lab))


def run(ctx: StageContext) -> None:
    from transformers import AutoTokenizer

    from randsae.examples import SCAN_BUDGET, ExampleParams, TokenSource, build_examples
    from randsae.latents import LatentCache

    params = ExampleParams.from_params(ctx.params)
    cache = LatentCache(ctx.inputs["latents"])
    tokens = TokenSource.from_artifact(ctx.inputs["tokens"], cache.first_eligible_position)
    tokenizer = AutoTokenizer.from_pretrained(str(ctx.inputs["tokenizer"]))
    budget = int(ctx.settings.get("scan_budget", SCAN_BUDGET))
    info = build_examples(cache, tokens, tokenizer, params, ctx.workdir, budget)
    log.info("%s: %d of %d latents eligible, %d sampled", ctx.spec["name"],
             info["n_eligible"], info["n_latents_total"], info["n_sampled"])
    ctx.info.update(info)


STAGE = StageDef(
    name="examples",
    version=1,
    doc="sampled latents with their explainer, test and non-activating examples",
    inputs={"latents": "latents", "tokens": "tokens", "tokenizer": "model"},
    expand=expand,
    resources=Resources(mem_mb=8000, runtime=60),
    outputs=(
        OutputFile("examples.json", "one LatentExamples record per sampled latent"),
        OutputFile("latents.parquet", "one row per latent: firing stats, abstractness, eligible, sampled",
                   "randsae.examples_schema:LatentRow"),
    ),
    run=run,
    # one job per model variant builds its SAEs' artifacts one after another: each is small,
    # and a job per SAE would spend most of its time starting up
    group=group_by_labels("model", "variant"),
)
