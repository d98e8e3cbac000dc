# randsae workflow. Run:  snakemake --profile profiles/local [--configfile F]
# The plan (src/randsae/plan.py) turns the validated config into content-addressed
# artifacts; rules are generic over keys and call the package (`randsae build`).
import sys

from randsae.config import DEFAULT_CONFIG, normalise, load_config
from randsae.plan import IMPLEMENTED_STAGES, build_plan

# Snakemake merges --configfile over a `configfile:` directive, which would mix two
# experiments' model lists, so the default is loaded only when no config was given.
CFG = normalise(config) if config else load_config(DEFAULT_CONFIG)
PLAN = build_plan(CFG)
STORE = CFG["store"].rstrip("/")
PY = sys.executable

include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/gpu.smk"
include: "rules/autointerp.smk"
include: "rules/generic.smk"
include: "rules/results.smk"

link_existing_artifacts()


rule all:
    default_target: True
    input:
        f"{RESULTS}/report.html",
