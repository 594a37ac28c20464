# MLflow: create the database and the experiment once, before parallel training jobs start
# (parallel first writers corrupt a fresh SQLite DB; concurrent set_experiment misfiles runs).


localrules:
    init_tracking,


rule init_tracking:
    output:
        TRACKING_JSON,
    params:
        t=config["tracking"],
        disabled="" if config["tracking"]["enabled"] else "--disabled",
        artifacts=lambda w: (f"--artifact-root {config['tracking']['artifact_root']}"
                             if config["tracking"]["artifact_root"] else ""),
    log:
        f"{config['results_dir']}/logs/init_tracking.log",
    shell:
        "python -m kdseg init-tracking --uri '{params.t[uri]}' --experiment '{params.t[experiment]}'"
        " {params.artifacts} --out {output} {params.disabled} > {log} 2>&1"
