# One generic rule per implemented stage, over artifact keys: output store/<stage>/<key>,
# inputs from the plan, and `randsae build` with the artifact's spec. (Activations have
# their own per-group rules in gpu.smk.)
for _stage, _res in STAGE_RESOURCES.items():
    if _stage not in IMPLEMENTED_STAGES:
        continue

    rule:
        name: _stage
        output: directory(f"{STORE}/{_stage}/{{key}}")
        input: unpack(stage_inputs(_stage))
        params: spec=stage_spec(_stage)
        log: f"logs/{_stage}/{{key}}.log"
        wildcard_constraints: key=KEY_PATTERN
        threads: DEFAULT_THREADS
        resources: **_res
        shell: BUILD_CMD
