# One generic rule per implemented stage, over artifact keys: output the link to
# store/<stage>/<key> (see LINKS in common.smk),
# inputs from the plan, and `randsae build` with the artifact's spec. (Activations have
# their own per-group rules in gpu.smk.)
for _stage, _res in STAGE_RESOURCES.items():
    if _stage not in IMPLEMENTED_STAGES:
        continue

    rule:
        name: _stage
        output: directory(link_path(_stage, "{key}"))
        input: unpack(stage_inputs(_stage))
        params: spec=stage_spec(_stage)
        log: f"logs/{_stage}/{{key}}.log"
        wildcard_constraints: key=KEY_PATTERN
        threads: DEFAULT_THREADS
        resources: **_res
        shell: BUILD_CMD
