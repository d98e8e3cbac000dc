"""The ``randsae`` command line.

    randsae plan [--configfile F] [--json]
    randsae store ls [--stage S] [--json] [--store DIR]
    randsae store verify [--store DIR]
    randsae store gc [--configfile F ...] [--dry-run]
    randsae store path NAME [--configfile F]
    randsae query "SQL" [--csv | --json] [--db F]
    randsae aggregate [--configfile F]                    (DuckDB, figures, report)
    randsae build --spec JSON --store DIR                 (what the Snakemake rules call)
    randsae build-activations --specs JSON --store DIR    (several layers, one pass)

Store commands take the store root from ``--store``, else from the config.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Literal

from randsae.config import DEFAULT_CONFIG, ConfigError, load_config
from randsae.plan import IMPLEMENTED_STAGES, STAGES, build_plan, estimate_bytes, summary
from randsae.store import Store


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "unknown (set models.<name>.d_model)"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if value < 1000 or unit == "PB":
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def _store_for(args: argparse.Namespace) -> Store:
    if getattr(args, "store", None):
        return Store(args.store)
    files = getattr(args, "configfile", None) or [DEFAULT_CONFIG]
    files = files if isinstance(files, list) else [files]
    return Store(load_config(files[0])["store"])


# ---------------------------------------------------------------------------- commands


def cmd_plan(args: argparse.Namespace) -> int:
    cfg = load_config(args.configfile)
    plan = build_plan(cfg)
    est = estimate_bytes(cfg)
    if args.json:
        out = {
            "artifacts": [
                {"stage": a.stage, "key": a.key, "name": a.name, "params": a.params, "inputs": a.inputs,
                 "implemented": a.stage in IMPLEMENTED_STAGES}
                for a in plan
            ],
            "jobs": summary(plan),
            "estimated_bytes": est,
        }
        json.dump(out, sys.stdout, indent=1)
        print()
        return 0
    for a in plan:
        print(f"{a.key}  {a.name}")
    print()
    counts = summary(plan)
    width = max(map(len, STAGES))
    print("jobs per stage" + " " * (width - 3) + "(* = not yet in the pipeline)")
    for stage in STAGES:
        mark = "" if stage in IMPLEMENTED_STAGES else " *"
        print(f"  {stage:<{width}} {counts[stage]:>7}{mark}")
    print(f"  {'total':<{width}} {len(plan):>7}")
    print(f"estimated disk: activations {_human_bytes(est['activations'])}, latent caches {_human_bytes(est['latents'])}")
    return 0


def cmd_store_ls(args: argparse.Namespace) -> int:
    store = _store_for(args)
    rows = list(store.iter_meta(args.stage))
    if args.json:
        json.dump([{k: m.get(k) for k in ("stage", "key", "name", "created", "total_bytes")} for m in rows], sys.stdout, indent=1)
        print()
        return 0
    for m in rows:
        print(f"{m['stage']:<12} {m['key']}  {_human_bytes(m.get('total_bytes', 0)):>10}  {m['created']}  {m['name']}")
    print(f"{len(rows)} artifacts in {store.root}")
    return 0


def cmd_store_verify(args: argparse.Namespace) -> int:
    store = _store_for(args)
    problems = store.verify()
    for p in problems:
        print(f"MISMATCH {p}")
    n = sum(1 for _ in store.iter_meta())
    print(f"verified {n} artifacts in {store.root}: {'clean' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


def cmd_store_gc(args: argparse.Namespace) -> int:
    files = args.configfile or [DEFAULT_CONFIG]
    keep: set[str] = set()
    for f in files:
        keep |= build_plan(load_config(f)).keys()
    store = _store_for(args)
    doomed = store.gc(keep, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for p in doomed:
        print(f"{verb} {p}")
    print(f"{verb} {len(doomed)} entries; kept everything referenced by {', '.join(map(str, files))}")
    return 0


def cmd_store_path(args: argparse.Namespace) -> int:
    cfg = load_config(args.configfile)
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


def _set_threads(n: int | None) -> None:
    """CPU results are bitwise reproducible only for a fixed thread count (matmul reduction
    order follows the partitioning), so jobs run with exactly the rule's thread count."""
    if n:
        import torch

        torch.set_num_threads(n)


def cmd_build(args: argparse.Namespace) -> int:
    from randsae.stages import build

    _set_threads(args.threads)
    spec: dict[str, Any] = json.loads(args.spec)
    store = Store(args.store)
    build(spec, store)
    for link in args.link:
        store.link(link)
    return 0


def cmd_build_activations(args: argparse.Namespace) -> int:
    from randsae.stages.activations import build_group

    _set_threads(args.threads)
    specs: list[dict[str, Any]] = json.loads(args.specs)
    store = Store(args.store)
    build_group(specs, store, batch_size=args.batch_size, chunk_tokens=args.chunk_tokens)
    for link in args.link:
        store.link(link)
    return 0


def cmd_aggregate(args: argparse.Namespace) -> int:
    from randsae.config import normalise
    from randsae.results.aggregate import aggregate

    cfg = normalise(json.loads(args.config_json)) if args.config_json else load_config(args.configfile)
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
    for sp, func in ((ls, cmd_store_ls), (ve, cmd_store_verify), (gc, cmd_store_gc), (pa, cmd_store_path)):
        sp.add_argument("--store", help="store root (default: the config's `store`)")
        if sp is gc:
            sp.add_argument("--configfile", type=Path, action="append", help="repeatable; default config/config.yaml")
        else:
            sp.add_argument("--configfile", type=Path, default=None)
        sp.set_defaults(func=func)

    bu = sub.add_parser("build", help="build one artifact from its plan spec (used by the Snakemake rules)")
    bu.add_argument("--spec", required=True, help="the artifact spec as JSON")
    bu.add_argument("--store", required=True)
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

    ba = sub.add_parser("build-activations", help="build several layers' activations in one pass (used by the rules)")
    ba.add_argument("--specs", required=True, help="JSON list of activation artifact specs (same model and tokens)")
    ba.add_argument("--store", required=True)
    ba.add_argument("--threads", type=int, help="torch CPU threads (the rule's threads)")
    ba.add_argument("--batch-size", type=int, default=8)
    ba.add_argument("--chunk-tokens", type=int, default=16384)
    ba.add_argument("--link", nargs="*", default=[], help="after building, symlink these paths (.../<stage>/<key>) to the artifacts (the rules' outputs)")
    ba.set_defaults(func=cmd_build_activations)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"randsae: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
