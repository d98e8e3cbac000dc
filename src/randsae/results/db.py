"""Build results/results.duckdb from the plan and the per-artifact Parquet files.

Why built whole and published by rename: DuckDB allows one read-write process per file and
read-only opens fail while it is held, so the aggregate job builds a fresh database in a
temporary sibling and ``os.replace``-s it onto the published path. A reader that opened the
old file keeps reading it (the old inode lives until it closes); a new reader sees the new
file; nobody ever sees a half-built database. Rebuilding from Parquet each time also makes the
database a pure function of the store: nothing to migrate, nothing to get out of step.

The plan, not the files, says which SAE a file belongs to: identifier columns (model, variant,
layer, expansion, k, seed) are attached from the plan by artifact name. Artifacts the store
does not have (a stage not run yet) simply contribute no rows; every table exists with its
full set of columns regardless.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

import randsae
from randsae.config import normalise
from randsae.enums import TRAINED
from randsae.plan import Plan, build_plan, canonical_json
from randsae.results import schemas
from randsae.results.auroc import auroc_tables
from randsae.results.catalog import TABLES, VIEWS
from randsae.results.discriminability import discriminability
from randsae.results.display import variant_order_macro_sql
from randsae.results.findings import findings
from randsae.results.headline import headline_view_sql
from randsae.results.layout import ID_COLUMNS, ID_TYPES, FileRef, SaeUnit, file_refs, sae_units
from randsae.sae.convergence import convergence
from randsae.sae.train_log import LOG_FILE
from randsae.stages import declared_output, stage_defs
from randsae.stages.sae import cached_activations
from randsae.store import Store, code_version

DB_NAME = "results.duckdb"

_ARTIFACT_IDS = {**ID_TYPES, "artifact_key": "VARCHAR"}
_SCORE_IDS = {**_ARTIFACT_IDS, "scorer": "VARCHAR"}
_USAGE_IDS = {**_ARTIFACT_IDS, "artifact_stage": "VARCHAR", "scorer": "VARCHAR"}
_PA_TYPES = {"VARCHAR": pa.string(), "INTEGER": pa.int32(), "BIGINT": pa.int64(), "DOUBLE": pa.float64(), "BOOLEAN": pa.bool_()}


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _create_from_arrow(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    view = f"_arrow_{uuid.uuid4().hex}"
    con.register(view, table)
    try:
        con.execute(f"CREATE TABLE {_q(name)} AS SELECT * FROM {_q(view)}")
    finally:
        con.unregister(view)


def _arrow_column(values: list[Any]) -> pa.Array:
    """A typed column from plan values: one type per column whatever the values (None-only
    columns become float64, nested values JSON text)."""
    present = [v for v in values if v is not None]
    if all(isinstance(v, bool) for v in present) and present:
        return pa.array(values, pa.bool_())
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present) and present:
        return pa.array(values, pa.int64())
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    if all(isinstance(v, str) for v in present):
        return pa.array(values, pa.string())
    return pa.array([None if v is None else canonical_json(v) for v in values], pa.string())


def _table_of(rows: list[dict[str, Any]], types: Mapping[str, pa.DataType] | None = None) -> pa.Table:
    names: list[str] = []
    for r in rows:
        names += [n for n in r if n not in names]
    types = types or {}
    cols = {}
    for n in names:
        vals = [r.get(n) for r in rows]
        cols[n] = pa.array(vals, types[n]) if n in types else _arrow_column(vals)
    return pa.table(cols)


# ------------------------------------------------------------------------------ tables


def _runs(con: duckdb.DuckDBPyConnection, cfg: Mapping[str, Any], store: Store, plan: Plan, n_built: int,
          settings: dict[str, Any]) -> None:
    row = {
        "built_at": dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0),
        "randsae_version": randsae.__version__,
        "code_version": code_version(),
        "store_root": str(store.root.resolve()),
        "config": canonical_json(cfg),
        "seed": int(cfg["seed"]),
        "n_planned": len(plan),
        "n_built": n_built,
        **settings,
    }
    types = {"built_at": pa.timestamp("us"), "n_boot": pa.int64(), "n_perm": pa.int64(), "alpha": pa.float64()}
    _create_from_arrow(con, "runs", _table_of([row], types))


def _artifacts(con: duckdb.DuckDBPyConnection, store: Store, plan: Plan) -> int:
    rows = []
    for a in plan:
        if not store.exists(a.stage, a.key):
            continue
        meta = store.meta(a.stage, a.key)
        created = meta.get("created")
        ts = dt.datetime.fromisoformat(created).astimezone(dt.UTC).replace(tzinfo=None) if created else None
        rows.append({
            "key": a.key, "stage": a.stage, "name": a.name, "version": int(meta.get("version", 0)),
            "params": canonical_json(meta.get("params", a.params)), "inputs": canonical_json(meta.get("inputs", {})),
            "code_version": meta.get("code_version"), "created": ts, "total_bytes": meta.get("total_bytes"),
            "path": str(store.path(a.stage, a.key)),
        })
    types = {"key": pa.string(), "stage": pa.string(), "name": pa.string(), "version": pa.int64(), "params": pa.string(),
             "inputs": pa.string(), "code_version": pa.string(), "created": pa.timestamp("us"),
             "total_bytes": pa.int64(), "path": pa.string()}
    table = _table_of(rows, types) if rows else pa.schema(list(types.items())).empty_table()
    _create_from_arrow(con, "artifacts", table)
    return len(rows)


def _progress(con: duckdb.DuckDBPyConnection, store: Store, plan: Plan) -> None:
    rows = []
    for i, (stage, decl) in enumerate(stage_defs().items()):
        arts = plan.stage(stage)
        rows.append({"stage_order": i, "stage": stage, "version": decl.version,
                     "planned": len(arts), "built": sum(store.exists(stage, a.key) for a in arts)})
    _create_from_arrow(con, "progress", _table_of(rows))


_UNIT_SETTINGS_SKIP = {"expansion", "k", "seed"}


def _saes(con: duckdb.DuckDBPyConnection, store: Store, plan: Plan, units: list[SaeUnit]) -> None:
    rows = []
    for u in units:
        acts = cached_activations(u.sae, plan)  # None when the SAE's group streams
        related = {f"{stage}_key": (u.related[stage].key if stage in u.related else None)
                   for stage in ("sae_metrics", "latents", "examples", "explain")}
        settings = {k: v for k, v in sorted(u.sae.params.items()) if k not in _UNIT_SETTINGS_SKIP}
        rows.append({
            **u.ids(), "name": u.sae.name, "tag": u.tag, "built": store.exists("sae", u.sae.key),
            "model_key": u.sae.inputs["model"], "activations_key": acts.key if acts else None, **related,
            "scorers": ",".join(sorted(u.scores)), **settings, "params": canonical_json(u.sae.params),
        })
    types = {n: _PA_TYPES[t] for n, t in ID_TYPES.items()}
    types.update({n: pa.string() for n in ("name", "tag", "model_key", "activations_key", "sae_metrics_key",
                                           "latents_key", "examples_key", "explain_key", "scorers", "params")})
    types["built"] = pa.bool_()
    table = _table_of(rows, types) if rows else pa.schema(list(types.items())).empty_table()
    _create_from_arrow(con, "saes", table)


def _load_files(con: duckdb.DuckDBPyConnection, table: str, refs: list[FileRef], id_types: Mapping[str, str],
                file_types: Mapping[str, str], renames: Mapping[str, str] | None = None) -> None:
    """CREATE TABLE ``table`` = template (ids + expected file columns) UNION ALL BY NAME the
    files, each row tagged with its file's ids. Columns a file lacks are NULL; extra file
    columns are kept; file columns are renamed by ``renames``, and then dropped if named like
    an identifier (the plan's values win)."""
    renames = renames or {}
    tpl = f"_tpl_{table}"
    cols = ", ".join(f"{_q(c)} {t}" for c, t in {**id_types, **file_types}.items())
    con.execute(f"CREATE TEMP TABLE {_q(tpl)} ({cols})")
    if not refs:
        con.execute(f"CREATE TABLE {_q(table)} AS SELECT * FROM {_q(tpl)}")
        return
    id_rows = [{"path": str(r.path), **{c: r.ids.get(c) for c in id_types}} for r in refs]
    ids = _table_of(id_rows, {"path": pa.string(), **{c: _PA_TYPES[t] for c, t in id_types.items()}})
    src = "read_parquet([" + ", ".join(_lit(str(r.path)) for r in refs) + "], filename = true, union_by_name = true)"
    file_cols = [r[0] for r in con.sql(f"DESCRIBE SELECT * FROM {src}").fetchall()]
    select = [f"i.{_q(c)}" for c in id_types]
    for c in file_cols:
        name = renames.get(c, c)
        if name in file_cols and name != c:
            name = c  # the file already has the renamed column: keep both under their own names
        if c == "filename" or name in id_types:
            continue
        select.append(f"f.{_q(c)} AS {_q(name)}")
    view = f"_ids_{table}"
    con.register(view, ids)
    try:
        con.execute(f"CREATE TABLE {_q(table)} AS SELECT * FROM {_q(tpl)} UNION ALL BY NAME "
                    f"SELECT {', '.join(select)} FROM {src} AS f JOIN {_q(view)} AS i ON f.filename = i.path")
    finally:
        con.unregister(view)


def _file_tables(con: duckdb.DuckDBPyConnection, store: Store, units: list[SaeUnit]) -> None:
    _load_files(con, "sae_metrics", file_refs(units, store, "sae_metrics", "metrics.parquet"), _ARTIFACT_IDS, schemas.SAE_METRICS)
    _load_files(con, "latents", file_refs(units, store, "examples", "latents.parquet"), _ARTIFACT_IDS, schemas.LATENTS)
    _load_files(con, "explanations", file_refs(units, store, "explain", "explanations.parquet"), _ARTIFACT_IDS,
                schemas.EXPLANATIONS, schemas.RENAMES)
    _load_files(con, "scores", file_refs(units, store, "score", "scores.parquet"), _SCORE_IDS, schemas.SCORES,
                schemas.RENAMES)
    usage = [FileRef(r.path, {**r.ids, "artifact_stage": stage})
             for stage in ("explain", "score") for r in file_refs(units, store, stage, "usage.parquet")]
    _load_files(con, "llm_usage", usage, _USAGE_IDS, schemas.USAGE, schemas.RENAMES)
    _load_files(con, "train_log", _sae_file_refs(units, store, LOG_FILE), ID_TYPES, schemas.TRAIN_LOG)


def _sae_file_refs(units: list[SaeUnit], store: Store, filename: str) -> list[FileRef]:
    """The files ``sae/<key>/<filename>`` of every built SAE; ids: the SAE's (the artifact is
    the SAE itself, so no ``artifact_key``)."""
    filename = declared_output("sae", filename).name
    refs = []
    for u in units:
        path = store.path("sae", u.sae.key) / filename
        if store.exists("sae", u.sae.key) and path.is_file():
            refs.append(FileRef(path=path, ids=u.ids()))
    return refs


_CONVERGENCE_TYPES: dict[str, pa.DataType] = {
    **{n: _PA_TYPES[t] for n, t in ID_TYPES.items()},
    "steps": pa.int64(), "fvu_before": pa.float64(), "fvu_end": pa.float64(), "improvement": pa.float64(),
    "converged": pa.bool_(),
}


def _convergence(con: duckdb.DuckDBPyConnection) -> None:
    """One row per SAE with a training log: randsae.sae.convergence.convergence of its (step,
    fvu) rows. A log the statistic cannot read (too coarse: a row reaching into both windows)
    gets its last step and NULL for the rest, so the report can say it was not judged."""
    ids = list(ID_TYPES)
    data = con.sql(f"SELECT * FROM (SELECT {', '.join(ids)}, list(step ORDER BY step), list(fvu ORDER BY step) "
                   f"FROM train_log GROUP BY ALL) ORDER BY model, layer, expansion, k, variant_order(variant), variant, seed"
                   ).fetchall()
    rows = []
    for *key, steps, fvu in data:
        row: dict[str, Any] = dict(zip(ids, key, strict=True))
        try:
            c = convergence(steps, [math.nan if f is None else f for f in fvu])
            row.update(c._asdict())
        except ValueError:
            row.update(steps=max(steps), fvu_before=None, fvu_end=None, improvement=None, converged=None)
        rows.append(row)
    table = _table_of(rows, _CONVERGENCE_TYPES) if rows else pa.schema(list(_CONVERGENCE_TYPES.items())).empty_table()
    _create_from_arrow(con, "convergence", table)


# ------------------------------------------------------------------------------- views

_IDS_SQL = ", ".join(ID_COLUMNS)


def _views(con: duckdb.DuckDBPyConnection) -> None:
    present = {r[0] for r in con.sql("DESCRIBE sae_metrics").fetchall()}
    parts = [f"SELECT {_IDS_SQL}, {_lit(m)} AS metric, CAST({_q(m)} AS DOUBLE) AS value FROM sae_metrics"
             for m in schemas.SAE_METRIC_NAMES if m in present]
    parts += [
        f"SELECT {_IDS_SQL}, 'auroc_' || scorer || CASE WHEN explanation_source = 'own' THEN '' "
        f"ELSE '_' || explanation_source END AS metric, auroc AS value FROM auroc",
        f"SELECT {_IDS_SQL}, 'token_entropy_mean' AS metric, avg(token_entropy) AS value FROM latents "
        f"WHERE sampled AND isfinite(token_entropy) GROUP BY {_IDS_SQL}",
        f"SELECT {_IDS_SQL}, 'token_lookup_share_mean' AS metric, avg(token_lookup_share) AS value FROM latents "
        f"WHERE n_fires > 0 AND isfinite(token_lookup_share) GROUP BY {_IDS_SQL}",
    ]
    union = "\nUNION ALL ".join(parts)
    con.execute(f"CREATE VIEW sae_metric_values AS SELECT * FROM ({union}) WHERE value IS NOT NULL AND isfinite(value)")
    trained = _lit(TRAINED)
    con.execute(f"""
        CREATE VIEW variant_vs_trained AS
        SELECT v.model, v.layer, v.expansion, v.k, v.seed, v.variant, v.metric,
               t.value AS trained_value, v.value AS variant_value, v.value - t.value AS difference,
               t.sae_key AS trained_sae_key, v.sae_key AS variant_sae_key
        FROM sae_metric_values AS v
        LEFT JOIN sae_metric_values AS t
          ON t.variant = {trained} AND t.model = v.model AND t.layer = v.layer AND t.expansion = v.expansion
         AND t.k = v.k AND t.seed = v.seed AND t.metric = v.metric
        WHERE v.variant <> {trained}
    """)
    latent = [
        ("token_entropy", "sampled"),
        ("token_lookup_share", "n_fires > 0"),
        ("frequency", "n_fires > 0"),
        ("max_activation", "n_fires > 0"),
    ]
    obs = [f"SELECT {_IDS_SQL}, 'sae' AS level, metric, CAST(NULL AS BIGINT) AS latent, value FROM sae_metric_values"]
    obs += [f"SELECT {_IDS_SQL}, 'latent', {_lit(col)}, latent, CAST({col} AS DOUBLE) FROM latents "
            f"WHERE {cond} AND isfinite({col})" for col, cond in latent]
    obs.append(f"SELECT {_IDS_SQL}, 'latent', 'latent_auroc_' || scorer, latent, auroc FROM latent_auroc "
               f"WHERE explanation_source = 'own' AND isfinite(auroc)")
    con.execute("CREATE VIEW observations AS " + "\nUNION ALL ".join(obs))


def _comments(con: duckdb.DuckDBPyConnection) -> None:
    for name, text in TABLES.items():
        con.execute(f"COMMENT ON TABLE {_q(name)} IS {_lit(text)}")
    for name, text in VIEWS.items():
        con.execute(f"COMMENT ON VIEW {_q(name)} IS {_lit(text)}")


# ------------------------------------------------------------------------------- build


def populate(con: duckdb.DuckDBPyConnection, cfg: Mapping[str, Any], store: Store, *, n_boot: int = 1000,
             n_perm: int = 1000, alpha: float = 0.01) -> None:
    """Create every table and view in an empty database (``cfg`` normalised)."""
    plan = build_plan(dict(cfg))
    units = sae_units(plan)
    seed = int(cfg["seed"])
    con.execute(variant_order_macro_sql())  # display order for ORDER BY (report, example queries)
    n_built = _artifacts(con, store, plan)
    _runs(con, cfg, store, plan, n_built, {"n_boot": n_boot, "n_perm": n_perm, "alpha": alpha})
    _progress(con, store, plan)
    _saes(con, store, plan, units)
    _file_tables(con, store, units)
    _convergence(con)
    pooled, per_latent = auroc_tables(con, seed, n_boot)
    _create_from_arrow(con, "auroc", pooled)
    _create_from_arrow(con, "latent_auroc", per_latent)
    _views(con)
    _create_from_arrow(con, "discriminability", discriminability(con, seed, n_boot=n_boot, n_perm=n_perm, alpha=alpha))
    con.execute(headline_view_sql([v for v in cfg["variants"] if v != TRAINED]))
    _create_from_arrow(con, "findings", findings(con, seed, n_boot=n_boot))
    _comments(con)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build_database(cfg: Mapping[str, Any], store: Store | str | os.PathLike[str], out_path: str | os.PathLike[str], *,
                   n_boot: int = 1000, n_perm: int = 1000, alpha: float = 0.01) -> Path:
    """Build the results database for ``cfg`` from ``store`` and publish it at ``out_path``.

    Built in a temporary file in the same folder, then renamed onto ``out_path``: readers see
    the old database or the new one, never a partial one. Returns ``out_path``.
    """
    cfg = normalise(cfg)
    store = store if isinstance(store, Store) else Store(Path(store))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        con = duckdb.connect(str(tmp))
        try:
            populate(con, cfg, store, n_boot=n_boot, n_perm=n_perm, alpha=alpha)
            con.execute("CHECKPOINT")
        finally:
            con.close()
        os.replace(tmp, out)
        _fsync_dir(out.parent)
    finally:
        for leftover in (tmp, Path(f"{tmp}.wal")):
            leftover.unlink(missing_ok=True)
    return out


def table_names(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    """{table or view name: column names} of a results database (tests, docs, report)."""
    out: dict[str, list[str]] = {}
    for name in [*TABLES, *VIEWS]:
        out[name] = [r[0] for r in con.sql(f"DESCRIBE {_q(name)}").fetchall()]
    return out
