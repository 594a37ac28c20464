# The multi-modal teacher: all modalities, one per fold x seed.


localrules:
    teacher_run_config,


rule teacher_run_config:
    output:
        f"{TEACHER_RUN}/run_config.yaml",
    params:
        run_config=lambda w: as_json(kdcfg.teacher_run_config(config, int(w.fold), int(w.seed))),
    log:
        f"{LOGS}/teacher/fold{{fold}}_seed{{seed}}.run_config.log",
    shell:
        "python -m kdseg write-run-config --json {params.run_config:q} --out {output} > {log} 2>&1"


rule train_teacher:
    input:
        run_config=f"{TEACHER_RUN}/run_config.yaml",
        data=f"{DATA}/preprocessed/manifest.csv",
        splits=f"{DATA}/splits.json",
        # ancient(): the tracking DB is created once; re-creating it must not retrain anything.
        tracking=ancient(TRACKING_JSON),
    output:
        model=f"{TEACHER_RUN}/model.pt",
        history=f"{TEACHER_RUN}/history.csv",
        info=f"{TEACHER_RUN}/run.json",
    threads: kdcfg.train_job_threads(config, "teacher")
    resources:
        gpu=config["resources"]["gpu_per_training_job"],
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=lambda w, attempt: 120 * attempt,
    log:
        f"{LOGS}/teacher/fold{{fold}}_seed{{seed}}.train.log",
    benchmark:
        kdcfg.train_benchmark_file(TEACHER_RUN)
    shell:
        "python -m kdseg train --run-dir $(dirname {input.run_config}) --tracking {input.tracking}"
        " --threads {threads} > {log} 2>&1"
