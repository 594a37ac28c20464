# Aggregation: tables and statistics over every evaluated run, then figures and the HTML report
# (file names: kdseg.report.files). Outputs are annotated for `snakemake --report`.


rule summarize:
    input:
        metrics=[f"{run}/metrics_per_case.csv" for run in all_runs()],
    output:
        **{name.replace(".", "_"): f"{SUMMARY}/{name}" for name in SUMMARY_FILES
           if name not in REPORTED_TABLES},
        **{name.replace(".", "_"): report(f"{SUMMARY}/{name}", category="Tables",
                                          labels={"table": label})
           for name, label in REPORTED_TABLES.items()},
    threads: 1
    resources:
        mem_mb=lambda w, attempt: 2000 * attempt,
        runtime=lambda w, attempt: 30 * attempt,
    params:
        runs=" ".join(all_runs()),
        stats=config["statistics"],
        ranking_metrics=" ".join(config["statistics"]["ranking_metrics"]),
    log:
        f"{LOGS}/summarize.log",
    shell:
        "python -m kdseg summarize --runs {params.runs} --out-dir $(dirname {output.comparison_md})"
        " --family {params.stats[family]} --n-boot {params.stats[n_boot]}"
        " --seed {params.stats[seed]} --ranking-metrics {params.ranking_metrics}"
        " --ranking-boot {params.stats[ranking_boot]} --threads {threads} > {log} 2>&1"


rule report:
    input:
        summary=[f"{SUMMARY}/{name}" for name in SUMMARY_FILES],
        predictions=[f"{run}/predictions" for run in all_runs()],
        dataset=f"{DATA}/preprocessed/dataset.json",
        tracking=ancient(TRACKING_JSON),
    output:
        index=report(f"{REPORT}/index.html", category="Report", labels={"page": "benchmark"}),
        figures=[
            report(f"{REPORT}/figures/{name}.png", category="Figures", labels={"figure": name})
            for name in FIGURES
        ],
        pdfs=[f"{REPORT}/figures/{name}.pdf" for name in FIGURES],
    threads: 1
    resources:
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=lambda w, attempt: 30 * attempt,
    params:
        runs=" ".join(all_runs()),
        config=lambda w: as_json(config),
        overlay_cases=config["report"]["overlay_cases"],
    log:
        f"{LOGS}/report.log",
    shell:
        "python -m kdseg report --summary-dir $(dirname {input.summary[0]}) --runs {params.runs}"
        " --preprocessed $(dirname {input.dataset})"
        " --config-json {params.config:q} --overlay-cases {params.overlay_cases}"
        " --out-dir $(dirname {output.index}) --tracking {input.tracking}"
        " --threads {threads} > {log} 2>&1"
