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

Execution setting: RANDSAE_EXAMPLES_SCAN_BUDGET (index entries scanned at once, default 2**22,
about 100 bytes of memory each).
"""

from __future__ import annotations

import logging
import os

from randsae.examples import SCAN_BUDGET, ExampleParams, TokenSource, build_examples
from randsae.latents import LatentCache
from randsae.stages import StageContext

log = logging.getLogger("randsae")


def run(ctx: StageContext) -> None:
    from transformers import AutoTokenizer

    params = ExampleParams.from_params(ctx.params)
    cache = LatentCache(ctx.inputs["latents"])
    tokens = TokenSource.from_artifact(ctx.inputs["tokens"], cache.first_eligible_position)
    tokenizer = AutoTokenizer.from_pretrained(str(ctx.inputs["tokenizer"]))
    budget = int(os.environ.get("RANDSAE_EXAMPLES_SCAN_BUDGET", SCAN_BUDGET))
    info = build_examples(cache, tokens, tokenizer, params, ctx.workdir, budget)
    log.info("%s: %d of %d latents eligible, %d sampled", ctx.spec["name"],
             info["n_eligible"], info["n_latents_total"], info["n_sampled"])
    ctx.info.update(info)
