# Auto-interp stages (CPU, or API calls): examples sampled from the latent cache.
STAGE_RESOURCES.update({
    "examples": {"mem_mb": 8000, "runtime": 60},
})
STAGE_RESOURCES.update({
    "explain": {"mem_mb": 16000, "runtime": 240},
    "score": {"mem_mb": 16000, "runtime": 240},
})

# Compute nodes often have no internet: calls to the Anthropic API run on the submit host.
if CFG["autointerp"]["client"] == "anthropic":
    localrules: explain, score
