# Students: one per modality subset x method x fold x seed. A method that distills from the
# frozen teacher waits for it; `baseline` does not.


localrules:
    student_run_config,


rule student_run_config:
    output:
        f"{STUDENT_RUN}/run_config.yaml",
    params:
        run_config=lambda w: as_json(
            kdcfg.student_run_config(config, w.subset, w.method, int(w.fold), int(w.seed))
        ),
    log:
        f"{LOGS}/student/{{subset}}/{{method}}/fold{{fold}}_seed{{seed}}.run_config.log",
    shell:
        "python -m kdseg write-run-config --json {params.run_config:q} --out {output} > {log} 2>&1"


rule train_student:
    input:
        run_config=f"{STUDENT_RUN}/run_config.yaml",
        data=f"{DATA}/preprocessed/manifest.csv",
        splits=f"{DATA}/splits.json",
        teacher=teacher_model,
        tracking=ancient(TRACKING_JSON),
    output:
        model=f"{STUDENT_RUN}/model.pt",
        history=f"{STUDENT_RUN}/history.csv",
        info=f"{STUDENT_RUN}/run.json",
    threads: kdcfg.train_job_threads(config, "student")
    resources:
        gpu=config["resources"]["gpu_per_training_job"],
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=lambda w, attempt: 120 * attempt,
    log:
        f"{LOGS}/student/{{subset}}/{{method}}/fold{{fold}}_seed{{seed}}.train.log",
    benchmark:
        kdcfg.train_benchmark_file(STUDENT_RUN)
    shell:
        "python -m kdseg train --run-dir $(dirname {input.run_config}) --tracking {input.tracking}"
        " --threads {threads} > {log} 2>&1"
