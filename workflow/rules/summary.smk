# Aggregated comparison: per-case long table and teacher / subset x method tables.


rule summarize:
    input:
        metrics=[f"{run}/metrics_per_case.csv" for run in all_runs()],
        tracking=ancient(TRACKING_JSON),
    output:
        long=f"{DATA}/summary/metrics_long.csv",
        table=f"{DATA}/summary/comparison.csv",
        markdown=f"{DATA}/summary/comparison.md",
    params:
        runs=" ".join(all_runs()),
    log:
        f"{LOGS}/summarize.log",
    shell:
        "python -m kdseg summarize --runs {params.runs} --out-dir $(dirname {output.table})"
        " --tracking {input.tracking} > {log} 2>&1"
