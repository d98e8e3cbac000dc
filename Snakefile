# randsae workflow. Run:  snakemake --profile profiles/local [--configfile F]
# The plan (src/randsae/plan.py) turns the validated config into content-addressed
# artifacts; one rule per stage declaration (src/randsae/stages/) calls `randsae build`.
import sys

from randsae.checks import preflight
from randsae.config import DEFAULT_CONFIG, normalise, load_config, read_yaml
from randsae.inputs import pin_inputs
from randsae.plan import build_plan

# Snakemake merges --configfile over a `configfile:` directive, which would mix two
# experiments' model lists, so the default is loaded only when no config was given.
CFG = normalise(config) if config else load_config(DEFAULT_CONFIG)
# Local inputs are pinned to their contents (keys hold fingerprints, randsae.inputs). The main
# process also checks what the plan can know (randsae.checks) and rejects duplicate YAML keys,
# which Snakemake's reader lets the last one win; a job re-parsing this file on a cluster node
# only pins (the submit host checked, and the API key may live there alone).
if workflow.is_main_process:
    for _configfile in workflow.configfiles:
        read_yaml(_configfile)
    CFG = preflight(CFG)
else:
    CFG = pin_inputs(CFG)
PLAN = build_plan(CFG)
STORE = CFG["store"].rstrip("/")
PY = sys.executable

include: "rules/common.smk"
include: "rules/stages.smk"
include: "rules/results.smk"

link_existing_artifacts()


rule all:
    default_target: True
    input:
        f"{RESULTS}/report.html",
