# CPU stages: the model and its variants, and the tokenized corpus splits.
# Rules are generated per stage from one template; resources are per stage family and
# profiles override them by rule name (set-resources).

DATA_STAGES = {
    "model": {"mem_mb": 8000, "runtime": 60},
    "tokens": {"mem_mb": 8000, "runtime": 120},
}

for _stage, _res in DATA_STAGES.items():

    rule:
        name: _stage
        output: directory(f"{STORE}/{_stage}/{{key}}")
        input: unpack(stage_inputs(_stage))
        params: spec=stage_spec(_stage)
        log: f"logs/{_stage}/{{key}}.log"
        wildcard_constraints: key=KEY_PATTERN
        threads: 1
        resources: **_res
        shell: BUILD_CMD
