"""The ``randsae`` command line.

    randsae plan [--configfile F] [--json]
    randsae stages [--markdown]                           (the stage declarations)
    randsae store ls [--stage S] [--json] [--store DIR]
    randsae store verify [--store DIR]
    randsae store gc [--configfile F ...] [--dry-run]
    randsae store path NAME [--configfile F]
    randsae store rm NAME_OR_KEY [--store DIR | --configfile F] [--dry-run]
                                                          (an artifact and everything built from it)
    randsae store init [--store DIR] [--force]            (mark a folder as a store; adopt an old one)
    randsae query "SQL" [--csv | --json] [--db F]
    randsae aggregate [--configfile F]                    (DuckDB, figures, report)
    randsae build (--spec JSON | --specs JSON) --store DIR [--settings JSON]
                                                          (what the Snakemake rules call)

Store commands take the store root from ``--store``, else from the config.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Literal

from randsae.checks import preflight
from randsae.config import DEFAULT_CONFIG, load_config
from randsae.errors import RandsaeError
from randsae.estimates import human_bytes
from randsae.inputs import pin_inputs
from randsae.plan import build_plan, stage_names, summary
from randsae.store import KEY_RE, Store, known_stages


def _store_for(args: argparse.Namespace) -> Store:
    if getattr(args, "store", None):
        return Store(args.store)
    files = getattr(args, "configfile", None) or [DEFAULT_CONFIG]
    files = files if isinstance(files, list) else [files]
    return Store(load_config(files[0])["store"])


# ---------------------------------------------------------------------------- commands


def cmd_plan(args: argparse.Namespace) -> int:
    cfg = preflight(load_config(args.configfile))  # pinned to its input files and checked
    plan = build_plan(cfg)
    from randsae.estimates import estimate, format_estimates

    est = estimate(cfg, plan)  # store size, GPU-hours, LLM cost, memory (docs/estimates.md)
    if args.json:
        out = {
            "artifacts": [
                {"stage": a.stage, "key": a.key, "name": a.name, "params": a.params, "inputs": a.inputs,
                 "labels": a.labels}
                for a in plan
            ],
            "jobs": summary(plan),
            "estimates": est.to_json(),
        }
        json.dump(out, sys.stdout, indent=1)
        print()
        return 0
    for a in plan:
        print(f"{a.key}  {a.name}")
    print()
    counts = summary(plan)
    width = max(map(len, stage_names()))
    print("artifacts per stage")
    for stage in stage_names():
        print(f"  {stage:<{width}} {counts[stage]:>7}")
    print(f"  {'total':<{width}} {len(plan):>7}")
    print()
    print(format_estimates(est))
    return 0


def stages_markdown() -> str:
    """The stage table of docs/architecture.md, from the declarations (a test keeps them equal)."""
    from randsae.stages import stage_defs

    lines = ["| stage | version | inputs (role: stage) | outputs | what |", "|---|---|---|---|---|"]
    for d in stage_defs().values():
        ins = ", ".join(f"{role}: {s}" for role, s in d.inputs.items()) or "-"
        outs = ", ".join(f"`{o.name}`" for o in d.outputs)
        lines.append(f"| {d.name} | {d.version} | {ins} | {outs} | {d.doc} |")
    return "\n".join(lines)


def cmd_stages(args: argparse.Namespace) -> int:
    from randsae.stages import stage_defs

    if args.markdown:
        print(stages_markdown())
        return 0
    for d in stage_defs().values():
        ins = ", ".join(f"{role}<-{s}" for role, s in d.inputs.items()) or "-"
        grouped = " (grouped jobs)" if d.group else ""
        print(f"{d.name:<12} v{d.version}  inputs {ins}{grouped}")
        print(f"{'':<12} {d.doc}; default {d.resources.mem_mb} MB, {d.resources.runtime} min")
        for o in d.outputs:
            print(f"{'':<14}{o.name:<22} {o.doc}")
    return 0


def cmd_store_ls(args: argparse.Namespace) -> int:
    store = _store_for(args)
    store.require()
    rows = list(store.iter_meta(args.stage))
    if args.json:
        json.dump([{k: m.get(k) for k in ("stage", "key", "name", "created", "total_bytes")} for m in rows], sys.stdout, indent=1)
        print()
        return 0
    for m in rows:
        print(f"{m['stage']:<12} {m['key']}  {human_bytes(m.get('total_bytes', 0)):>10}  {m['created']}  {m['name']}")
    print(f"{len(rows)} artifacts in {store.root}")
    return 0


def cmd_store_verify(args: argparse.Namespace) -> int:
    store = _store_for(args)
    problems = store.verify()  # refuses a missing folder or one that is not a store
    for p in problems:
        print(f"MISMATCH {p}")
    n = sum(1 for _ in store.iter_meta())
    if n == 0 and not problems:  # "verified 0 artifacts: clean" would hide a wrong path
        print(f"randsae: the store {store.root} holds no artifacts: nothing to verify", file=sys.stderr)
        return 1
    print(f"verified {n} artifacts in {store.root}: {'clean' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


def cmd_store_gc(args: argparse.Namespace) -> int:
    files = args.configfile or [DEFAULT_CONFIG]
    keep: set[str] = set()
    for f in files:
        keep |= build_plan(pin_inputs(load_config(f))).keys()
    store = _store_for(args)
    store.require()
    doomed = store.gc(keep, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for p in doomed:
        print(f"{verb} {p}")
    print(f"{verb} {len(doomed)} entries; kept everything referenced by {', '.join(map(str, files))}")
    return 0


def cmd_store_path(args: argparse.Namespace) -> int:
    cfg = pin_inputs(load_config(args.configfile))
    plan = build_plan(cfg)
    store = Store(args.store or cfg["store"])
    name = args.name.strip("/")
    a = plan.by_name.get(name)
    if a is None:
        close = sorted(n for n in plan.by_name if n.startswith(name.split("/")[0]))
        hint = ("; names in this stage look like: " + ", ".join(close[:5])) if close else ""
        print(f"no artifact named {name!r} in the plan of {args.configfile or DEFAULT_CONFIG}{hint}", file=sys.stderr)
        return 2
    path = store.path(a.stage, a.key)
    print(path)
    if not store.exists(a.stage, a.key):
        print(f"(not built yet: {path} does not exist)", file=sys.stderr)
        return 1
    return 0


def _artifact_ref(ref: str) -> str | None:
    """``ref`` if it is written ``<stage>/<key>`` with a known stage, else None."""
    stage, _, key = ref.partition("/")
    return ref if stage in known_stages() and KEY_RE.fullmatch(key) else None


def cmd_store_rm(args: argparse.Namespace) -> int:
    """Remove an artifact (published or broken) and everything built from it, so the next run
    rebuilds them: what a damaged-input error tells you to run."""
    store = _store_for(args)
    store.require()
    ref = args.ref.strip("/")
    plan = None
    if args.configfile or not (_artifact_ref(ref) or KEY_RE.fullmatch(ref)):
        plan = build_plan(pin_inputs(load_config(args.configfile)))
    target = _artifact_ref(ref)
    if target is None and KEY_RE.fullmatch(ref):
        hits = sorted({f"{s}/{ref}" for s in known_stages() if store.path(s, ref).is_dir()}
                      | ({plan.by_key[ref].relpath} if plan and ref in plan.by_key else set()))
        if len(hits) != 1:
            print(f"randsae: key {ref} names {len(hits)} artifacts in {store.root}; give it as <stage>/<key>", file=sys.stderr)
            return 2
        target = hits[0]
    if target is None:
        a = plan.by_name.get(ref) if plan else None
        if a is None:
            print(f"randsae: no artifact named {ref!r} in the plan of {args.configfile or DEFAULT_CONFIG} "
                  "(give a name from `randsae plan`, a <stage>/<key> or a key)", file=sys.stderr)
            return 2
        target = a.relpath
    edges = {a.relpath: [f"{a.input_stages[r]}/{k}" for r, k in a.inputs.items()] for a in plan} if plan else {}
    names = {a.relpath: a.name for a in plan} if plan else {}
    present = [r for r in store.dependents([target], edges) if store.path(*r.split("/", 1)).is_dir()]
    if not present:
        print(f"randsae: nothing to remove: {target} and the artifacts built from it are not in {store.root}", file=sys.stderr)
        return 1
    verb = "would remove" if args.dry_run else "removed"
    for r in present:
        meta_name = store.meta(*r.split("/", 1)).get("name") if store.exists(*r.split("/", 1)) else None
        if not args.dry_run:
            store.remove(r)
        print(f"{verb} {r}  {meta_name or names.get(r) or '(no meta.json)'}")
    print(f"{len(present)} artifacts {'would be removed' if args.dry_run else 'removed'}: {target} and everything built from it"
          + ("" if args.dry_run else "; the next pipeline run rebuilds them"))
    return 0


def cmd_store_init(args: argparse.Namespace) -> int:
    """Mark a folder as a store: a new or empty one, or one holding randsae artifacts made
    before stores were marked. Another non-empty folder only with --force."""
    store = _store_for(args)
    if store.is_store():
        print(f"{store.root} is already a randsae store")
        return 0
    n = sum(1 for _ in store.iter_meta())
    if store.root.is_dir() and any(store.root.iterdir()) and n == 0 and not args.force:
        print(f"randsae: {store.root} is not empty and holds no randsae artifacts; pass --force to make it a store anyway",
              file=sys.stderr)
        return 2
    store.create()
    print(f"{store.root} is a randsae store ({n} artifacts adopted)" if n else f"{store.root} is a randsae store")
    return 0


def _set_threads(n: int | None) -> None:
    """CPU results are bitwise reproducible only for a fixed thread count (matmul reduction
    order follows the partitioning), so jobs run with exactly the rule's thread count."""
    if n:
        import torch

        torch.set_num_threads(n)


def cmd_build(args: argparse.Namespace) -> int:
    """Build one artifact (--spec) or one group of a grouped stage (--specs) with the given
    execution settings (the config's ``execution`` section as the rules pass it)."""
    from randsae.kernels.dispatch import set_backend
    from randsae.stages import build, build_group

    _set_threads(args.threads)
    settings: dict[str, Any] = json.loads(args.settings)
    set_backend(settings.get("kernels", "auto"))
    store = Store(args.store)
    if args.specs:
        build_group(json.loads(args.specs), store, settings)
    else:
        build(json.loads(args.spec), store, settings)
    for link in args.link:
        store.link(link)
    return 0


def cmd_aggregate(args: argparse.Namespace) -> int:
    from randsae.config import normalise
    from randsae.results.aggregate import aggregate

    cfg = normalise(json.loads(args.config_json)) if args.config_json else pin_inputs(load_config(args.configfile))
    results = Path(args.results or cfg["results"])
    paths = aggregate(cfg, Store(cfg["store"]), results)
    print(f"\nresults database: {paths['db']}\nreport:           {paths['report']}")
    print(f"figures:          {results / 'figures'}")
    print(f"query it:         randsae query \"SELECT * FROM discriminability LIMIT 10\" --db {paths['db']}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from randsae.results.query import query

    db = args.db or Path(load_config(args.configfile)["results"]) / "results.duckdb"
    fmt: Literal["table", "csv", "json"] = "csv" if args.csv else "json" if args.json else "table"
    try:
        print(query(db, args.sql, fmt=fmt))
    except FileNotFoundError:
        print(f"randsae: no results database at {db}; run the pipeline (snakemake --profile profiles/local) first", file=sys.stderr)
        return 2
    except Exception as e:  # duckdb.Error: bad SQL, or an attempt to write
        print(f"randsae: query failed: {e}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------- parser


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="randsae", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    pl = sub.add_parser("plan", help="list the artifacts a config needs, with job counts and a disk estimate")
    pl.add_argument("--configfile", type=Path, default=None)
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=cmd_plan)

    sg = sub.add_parser("stages", help="list the stages: version, inputs, outputs, default resources")
    sg.add_argument("--markdown", action="store_true", help="the table docs/architecture.md shows")
    sg.set_defaults(func=cmd_stages)

    st = sub.add_parser("store", help="inspect and maintain the artifact store")
    ssub = st.add_subparsers(dest="store_command", required=True)
    ls = ssub.add_parser("ls", help="list finished artifacts")
    ls.add_argument("--stage")
    ls.add_argument("--json", action="store_true")
    ve = ssub.add_parser("verify", help="recompute checksums; non-zero exit on any mismatch")
    gc = ssub.add_parser("gc", help="remove artifacts no given config references")
    gc.add_argument("--dry-run", action="store_true")
    pa = ssub.add_parser("path", help="path of an artifact by its human-readable name")
    pa.add_argument("name")
    rm = ssub.add_parser("rm", help="remove an artifact and everything built from it (the next run rebuilds them)")
    rm.add_argument("ref", help="the artifact's name (needs its config), <stage>/<key>, or key")
    rm.add_argument("--dry-run", action="store_true")
    ini = ssub.add_parser("init", help="mark a folder as a store (adopts a store made before stores were marked)")
    ini.add_argument("--force", action="store_true", help="also a non-empty folder that holds no artifacts")
    for sp, func in ((ls, cmd_store_ls), (ve, cmd_store_verify), (gc, cmd_store_gc), (pa, cmd_store_path),
                     (rm, cmd_store_rm), (ini, cmd_store_init)):
        sp.add_argument("--store", help="store root (default: the config's `store`)")
        if sp is gc:
            sp.add_argument("--configfile", type=Path, action="append", help="repeatable; default config/config.yaml")
        else:
            sp.add_argument("--configfile", type=Path, default=None)
        sp.set_defaults(func=func)

    bu = sub.add_parser("build", help="build one artifact, or one group, from plan specs (used by the Snakemake rules)")
    what = bu.add_mutually_exclusive_group(required=True)
    what.add_argument("--spec", help="the artifact spec as JSON")
    what.add_argument("--specs", help="JSON list of specs of one group of a grouped stage (built in one job)")
    bu.add_argument("--store", required=True)
    bu.add_argument("--settings", default="{}", help="execution settings as JSON (randsae.plan.execution_settings)")
    bu.add_argument("--threads", type=int, help="torch CPU threads (the rule's threads)")
    bu.add_argument("--link", nargs="*", default=[], help="after building, symlink these paths (.../<stage>/<key>) to the artifacts (the rules' outputs)")
    bu.set_defaults(func=cmd_build)

    ag = sub.add_parser("aggregate", help="build results.duckdb, figures and the report from the store")
    ag.add_argument("--configfile", type=Path, default=None)
    ag.add_argument("--config-json", help="the normalised config as JSON (what the rule passes)")
    ag.add_argument("--results", help="results folder (default: the config's `results`)")
    ag.set_defaults(func=cmd_aggregate)

    qu = sub.add_parser("query", help="run SQL against the latest results database")
    qu.add_argument("sql")
    qu.add_argument("--db", type=Path, help="default: <results>/results.duckdb of the config")
    qu.add_argument("--configfile", type=Path, default=None)
    fmt = qu.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true")
    fmt.add_argument("--json", action="store_true")
    qu.set_defaults(func=cmd_query)

    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except RandsaeError as e:  # anticipated: the message says it all (randsae.errors)
        print(f"randsae: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
