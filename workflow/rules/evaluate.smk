# Inference and evaluation, shared by teacher and student runs ({run} is the run folder below
# runs/). Predictions are restored to the original geometry and compared with the source label
# files that preprocessing recorded (whatever the dataset's layout).


rule predict:
    input:
        model=f"{DATA}/runs/{{run}}/model.pt",
        splits=f"{DATA}/splits.json",
    output:
        directory(f"{DATA}/runs/{{run}}/predictions"),
    threads: config["resources"]["train_threads"]
    resources:
        gpu=config["resources"]["gpu_per_training_job"],
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=lambda w, attempt: 60 * attempt,
    log:
        f"{LOGS}/{{run}}.predict.log",
    shell:
        "python -m kdseg predict --run-dir $(dirname {input.model}) --out {output}"
        " --threads {threads} > {log} 2>&1"


rule evaluate:
    input:
        predictions=f"{DATA}/runs/{{run}}/predictions",
        dataset=f"{DATA}/preprocessed/dataset.json",
        tracking=ancient(TRACKING_JSON),
    output:
        f"{DATA}/runs/{{run}}/metrics_per_case.csv",
    threads: 1
    resources:
        mem_mb=lambda w, attempt: 2000 * attempt,
        runtime=lambda w, attempt: 30 * attempt,
    params:
        empty_rule=config["evaluation"]["empty_rule"],
        nsd_tolerance_mm=config["evaluation"]["nsd_tolerance_mm"],
    log:
        f"{LOGS}/{{run}}.evaluate.log",
    shell:
        "python -m kdseg evaluate --run-dir $(dirname {input.predictions})"
        " --predictions {input.predictions} --references-from $(dirname {input.dataset})"
        " --out {output} --empty-rule {params.empty_rule}"
        " --nsd-tolerance-mm {params.nsd_tolerance_mm} --tracking {input.tracking}"
        " --threads {threads} > {log} 2>&1"
