# Results: DuckDB file, figures and HTML report from every artifact of the plan. The DB is
# written to a temp file and renamed, so readers never see half a database; the declared
# output is the report (Snakemake deletes declared outputs before a job runs, and the DB
# must stay readable while it is being rebuilt).
RESULTS = CFG["results"].rstrip("/")


rule aggregate:
    input: [artifact_link(a) for a in PLAN],
    output: f"{RESULTS}/report.html",
    params: config=shlex.quote(canonical_json(CFG)),
    log: "logs/aggregate.log",
    localrule: True
    shell:
        f"{shlex.quote(PY)} -m randsae aggregate --config-json {{params.config}} --results {shlex.quote(RESULTS)} 2>{{log}}"
