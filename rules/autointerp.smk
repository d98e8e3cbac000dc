# Auto-interp stages (CPU, or API calls): examples sampled from the latent cache.
STAGE_RESOURCES.update({
    "examples": {"mem_mb": 8000, "runtime": 60},
})
