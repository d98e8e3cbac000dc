# GPU stages. Activations: one job per (model variant, train tokens) computes every layer
# that is not in the store yet in a single forward pass, so its rule is generated per group
# with exactly those layers as outputs. Adding a layer later makes a job for that layer
# alone; the other layers' artifacts (same keys) are untouched.
import hashlib
from collections import defaultdict

ACT_RESOURCES = {"mem_mb": 16000, "runtime": 240}

STAGE_RESOURCES.update({
    "sae": {"mem_mb": 16000, "runtime": 720},
    "sae_metrics": {"mem_mb": 16000, "runtime": 120},
    "latents": {"mem_mb": 16000, "runtime": 240},
})


def _activation_groups():
    groups = defaultdict(list)
    for a in PLAN.stage("activations"):
        groups[(a.inputs["model"], a.inputs["tokens"])].append(a)
    return groups


def family_resources(family, defaults):
    """Resources a profile sets for a rule family (set-resources: <family>: ...), applied
    to generated rules whose names carry a suffix."""
    settings = getattr(workflow, "resource_settings", None)
    parsed = getattr(settings, "_parsed_overwrite_resources", {}) or {}
    return {**defaults, **{k: v.raw if hasattr(v, "raw") else v for k, v in parsed.get(family, {}).items()}}


def family_threads(family, default):
    """Threads a profile sets for a rule family (set-threads: <family>: N)."""
    settings = getattr(workflow, "resource_settings", None)
    parsed = getattr(settings, "_parsed_overwrite_threads", {}) or {}
    value = parsed.get(family, default)
    return int(getattr(value, "raw", value))


for (_model_key, _tokens_key), _arts in sorted(_activation_groups().items()):
    _gid = hashlib.sha256((_model_key + _tokens_key).encode()).hexdigest()[:10]
    # only layers not yet in the store; built ones were linked when the workflow was parsed
    _todo = [a for a in sorted(_arts, key=lambda a: a.key) if not STORE_NOW.exists(a.stage, a.key)]
    if _todo:
        rule:
            name: f"activations_{_gid}"
            output: [directory(artifact_link(a)) for a in _todo]
            input: model=link_path("model", _model_key), tokens=link_path("tokens", _tokens_key)
            params:
                specs=shlex.quote(canonical_json([a.spec() for a in _todo])),
                batch=CFG["activations"]["batch_size"],
                chunk=CFG["activations"]["chunk_tokens"],
            log: f"logs/activations/{_gid}.log"
            threads: family_threads("activations", DEFAULT_THREADS)
            resources: **family_resources("activations", ACT_RESOURCES)
            shell:
                f"{shlex.quote(PY)} -m randsae build-activations --store {shlex.quote(STORE)} --threads {{threads}} "
                "--batch-size {params.batch} --chunk-tokens {params.chunk} --specs {params.specs} --link {output} > {log} 2>&1"
