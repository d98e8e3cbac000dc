# Helpers shared by every stage rule: paths, inputs and the build command of an artifact.
import os
import shlex

from randsae.plan import canonical_json
from randsae.store import Store

KEY_PATTERN = "[0-9a-f]{20}"


# Snakemake's outputs are not the store's artifact directories but symlinks to them in
# this working directory (LINKS/<stage>/<key>). Snakemake deletes a job's existing outputs
# before it runs; were they the artifacts, a second pipeline on the same store could
# delete an artifact that the first one had just published (and was reading). A job
# removes only its own link, finds the artifact under the store's lock, builds it if it
# is missing, and links it again (`randsae build --link`).
LINKS = ".randsae/links"


def link_path(stage, key):
    """This working directory's link to an artifact: what rules declare and consume."""
    return f"{LINKS}/{stage}/{key}"


def artifact_link(a):
    return link_path(a.stage, a.key)


# the store as this parse sees it (which artifacts are already published)
STORE_NOW = Store(STORE)


def link_existing_artifacts():
    """Link every planned artifact that is already in the store but not yet linked here
    (built by an earlier run, or by another pipeline on the same store), so no job runs
    for it. Plan order is topological, so links are made upstream first and an input's
    link is never newer than its consumer's."""
    for a in PLAN:
        link = artifact_link(a)
        done = STORE_NOW.exists(a.stage, a.key)
        if os.path.islink(link) and not done:
            # gone, or broken (a directory without meta.json, which a link would still show
            # as a finished output): drop the link so Snakemake rebuilds it
            os.unlink(link)
        elif done and not os.path.lexists(link):
            STORE_NOW.link(link)


def stage_inputs(stage):
    """Input function: links to the finished input artifacts of the artifact with this key."""

    def inputs(wildcards):
        a = PLAN.get(stage, wildcards.key)
        return {role: link_path(a.input_stages[role], k) for role, k in a.inputs.items()}

    return inputs


def stage_spec(stage):
    """Params function: the artifact's spec, shell-quoted for `randsae build --spec`."""

    def spec(wildcards):
        return shlex.quote(canonical_json(PLAN.get(stage, wildcards.key).spec()))

    return spec


# Every job sets torch's thread count to its rule's threads: CPU results are bitwise
# reproducible only for a fixed thread count. Profiles change it with set-threads.
DEFAULT_THREADS = 2


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
