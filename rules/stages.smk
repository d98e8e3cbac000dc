# One rule per stage, generated from the stage declarations (randsae.stages: STAGE in each
# module). Outputs are links to store/<stage>/<key> (see LINKS in common.smk); inputs come from
# the plan; the job is `randsae build` with the artifact's spec and the execution settings.
# A stage with `group` (activations: every layer of a model variant in one forward pass) gets
# one rule per group instead, whose outputs are exactly the group's artifacts not yet in the
# store: adding a layer later makes a job for that layer alone.
# A stage's `extra_inputs` (sae: the cached activations, when the config caches them) are
# inputs of its rules too, so Snakemake builds them first; no key covers them.
import hashlib
from collections import defaultdict

from randsae.plan import execution_settings
from randsae.sae_devices import gpu_resources, launch_command
from randsae.stages import stage_defs

BUILD = f"{shlex.quote(PY)} -m randsae build --store {shlex.quote(STORE)} --threads {{threads}}"


def _settings(stage):
    return shlex.quote(canonical_json(execution_settings(CFG, stage)))


def _extra_inputs(stage, arts):
    """Links to the extra inputs of ``arts`` (the stage's `extra_inputs`), named extra_0, ..."""
    if stage.extra_inputs is None:
        return {}
    links = sorted({artifact_link(x) for a in arts for x in stage.extra_inputs(a, PLAN)})
    return {f"extra_{i}": link for i, link in enumerate(links)}


def _with_extra_inputs(stage):
    """Input function of a per-artifact rule: its keyed inputs and its extra inputs."""
    keyed = stage_inputs(stage.name)

    def inputs(wildcards):
        return {**keyed(wildcards), **_extra_inputs(stage, [PLAN.get(stage.name, wildcards.key)])}

    return inputs


def _resources(stage):
    """The stage's default resources (GPU requests are the SLURM profile's: profiles/slurm)."""
    return {"mem_mb": stage.resources.mem_mb, "runtime": stage.resources.runtime}


for _stage in stage_defs().values():
    if _stage.group is None:

        rule:
            name: _stage.name
            output: directory(link_path(_stage.name, "{key}"))
            input: unpack(_with_extra_inputs(_stage))
            params: spec=stage_spec(_stage.name), settings=_settings(_stage.name)
            log: f"logs/{_stage.name}/{{key}}.log"
            wildcard_constraints: key=KEY_PATTERN
            threads: DEFAULT_THREADS
            resources: **_resources(_stage)
            localrule: _stage.local(CFG)
            priority: _stage.priority
            shell: BUILD + " --spec {params.spec} --settings {params.settings} --link {output} > {log} 2>&1"

        continue
    _groups = defaultdict(list)
    for _a in PLAN.stage(_stage.name):
        _groups[_stage.group(_a)].append(_a)
    for _gkey, _arts in sorted(_groups.items()):
        _gid = hashlib.sha256(_gkey.encode()).hexdigest()[:10]
        # only artifacts not yet in the store; built ones were linked when the workflow was parsed
        _todo = [a for a in sorted(_arts, key=lambda a: a.key) if not STORE_NOW.exists(a.stage, a.key)]
        if not _todo:
            continue
        # every member's inputs (sae_metrics: the group's SAEs differ), not just the first's
        _in = {role: sorted({link_path(a.input_stages[role], a.inputs[role]) for a in _todo}) for role in _todo[0].inputs}
        _in.update(_extra_inputs(_stage, _todo))
        # a job that may span several devices (StageDef.devices; sae: execution.sae.devices): one
        # torchrun process per device, each asking for the GPUs the profile gives one job, times N
        _n = _stage.devices(CFG, PLAN, _todo) if _stage.devices is not None else 1
        _gsettings = execution_settings(CFG, _stage.name)
        if _stage.devices is not None:
            _gsettings["devices"] = _n

        rule:
            name: f"{_stage.name}_{_gid}"
            output: [directory(artifact_link(a)) for a in _todo]
            input: **_in
            params:
                specs=shlex.quote(canonical_json([a.spec() for a in _todo])),
                settings=shlex.quote(canonical_json(_gsettings)),
            log: f"logs/{_stage.name}/{_gid}.log"
            threads: family_threads(_stage.name, DEFAULT_THREADS)
            resources: **gpu_resources(family_resources(_stage.name, _resources(_stage)), _n)
            localrule: _stage.local(CFG)
            priority: _stage.priority
            shell: launch_command(BUILD, _n) + " --specs {params.specs} --settings {params.settings} --link {output} > {log} 2>&1"
