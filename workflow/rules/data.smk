# Dataset: the built-in synthetic generator (when selected), preprocessing and splits.

SYNTHETIC = config["dataset"]["source"] == "synthetic"

if SYNTHETIC:

    rule synthesize:
        output:
            # The whole folder: changing the generator settings regenerates it from scratch.
            directory(f"{DATA}/raw"),
        params:
            spec=lambda w: config["dataset"]["synthetic"],
            shape=lambda w: " ".join(map(str, config["dataset"]["synthetic"]["shape"])),
        log:
            f"{LOGS}/synthesize.log",
        shell:
            "python -m kdseg synthesize --out {output}"
            " --n-cases {params.spec[n_cases]} --shape {params.shape}"
            " --seed {params.spec[seed]} --difficulty {params.spec[difficulty]}"
            " --no-enhancing-fraction {params.spec[no_enhancing_fraction]} > {log} 2>&1"


rule preprocess:
    input:
        raw=f"{DATA}/raw" if SYNTHETIC else [],
    output:
        manifest=f"{DATA}/preprocessed/manifest.csv",
        fingerprint=f"{DATA}/preprocessed/dataset.json",
    params:
        root=lambda w, input: input.raw if SYNTHETIC else config["dataset"]["root"],
        modalities=" ".join(config["dataset"]["modalities"]),
        labels=config["dataset"]["labels"],
        margin=config["preprocess"]["crop_margin"],
    log:
        f"{LOGS}/preprocess.log",
    shell:
        "python -m kdseg preprocess --root {params.root} --out $(dirname {output.manifest})"
        " --modalities {params.modalities} --labels {params.labels} --margin {params.margin}"
        " > {log} 2>&1"


rule make_splits:
    input:
        f"{DATA}/preprocessed/manifest.csv",
    output:
        f"{DATA}/splits.json",
    params:
        s=config["splits"],
    log:
        f"{LOGS}/splits.log",
    shell:
        "python -m kdseg split --manifest {input} --out {output} --folds {params.s[folds]}"
        " --test-fraction {params.s[test_fraction]} --val-fraction {params.s[val_fraction]}"
        " --seed {params.s[seed]} > {log} 2>&1"
