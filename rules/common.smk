# Helpers shared by every stage rule: paths, inputs and the build command of an artifact.
import shlex

from randsae.plan import canonical_json

KEY_PATTERN = "[0-9a-f]{20}"


def artifact_path(a):
    return f"{STORE}/{a.relpath}"


def stage_inputs(stage):
    """Input function: the finished input artifacts of the artifact with this key."""

    def inputs(wildcards):
        a = PLAN.get(stage, wildcards.key)
        return {role: f"{STORE}/{a.input_stages[role]}/{k}" for role, k in a.inputs.items()}

    return inputs


def stage_spec(stage):
    """Params function: the artifact's spec, shell-quoted for `randsae build --spec`."""

    def spec(wildcards):
        return shlex.quote(canonical_json(PLAN.get(stage, wildcards.key).spec()))

    return spec


# stage -> default resources of its generic rule; each family's .smk adds its stages
STAGE_RESOURCES = {}

BUILD_CMD = f"{shlex.quote(PY)} -m randsae build --store {shlex.quote(STORE)} --threads {{threads}} --spec {{params.spec}} > {{log}} 2>&1"

# Every job sets torch's thread count to its rule's threads: CPU results are bitwise
# reproducible only for a fixed thread count. Profiles change it with set-threads.
DEFAULT_THREADS = 2
