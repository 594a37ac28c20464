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
    log:
        f"{config['results_dir']}/logs/init_tracking.log",
    shell:
        "python -m kdseg init-tracking --uri '{params.t[uri]}' --experiment '{params.t[experiment]}'"
        " --artifact-root {params.t[artifact_root]} --out {output} {params.disabled} > {log} 2>&1"
