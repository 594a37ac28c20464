# Dataset: the built-in synthetic generator (when selected), preprocessing and splits.

if config["dataset"]["source"] == "synthetic":

    rule synthesize:
        output:
            f"{DATA}/raw/synthetic.json",
        params:
            spec=lambda w: config["dataset"]["synthetic"],
            shape=lambda w: " ".join(map(str, config["dataset"]["synthetic"]["shape"])),
        log:
            f"{LOGS}/synthesize.log",
        shell:
            "python -m kdseg synthesize --out {DATA}/raw"
            " --n-cases {params.spec[n_cases]} --shape {params.shape}"
            " --seed {params.spec[seed]} --difficulty {params.spec[difficulty]}"
            " --no-enhancing-fraction {params.spec[no_enhancing_fraction]} > {log} 2>&1"


rule preprocess:
    input:
        f"{DATA}/raw/synthetic.json" if config["dataset"]["source"] == "synthetic" else [],
    output:
        manifest=f"{DATA}/preprocessed/manifest.csv",
        fingerprint=f"{DATA}/preprocessed/dataset.json",
    params:
        root=raw_root(),
        modalities=" ".join(config["dataset"]["modalities"]),
        labels=config["dataset"]["labels"],
        margin=config["preprocess"]["crop_margin"],
    log:
        f"{LOGS}/preprocess.log",
    shell:
        "python -m kdseg preprocess --root {params.root} --out {DATA}/preprocessed"
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
