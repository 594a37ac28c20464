# Dataset: the built-in synthetic generator (when selected), preprocessing (any layout, through
# kdseg.data.adapters) and splits.

SYNTHETIC = config["dataset"]["source"] == "synthetic"

if SYNTHETIC:

    rule synthesize:
        output:
            # The whole folder: changing the generator settings regenerates it from scratch.
            directory(f"{DATA}/raw"),
        threads: 1
        resources:
            mem_mb=lambda w, attempt: 2000 * attempt,
            runtime=lambda w, attempt: 60 * attempt,
        params:
            spec=lambda w: config["dataset"]["synthetic"],
            shape=lambda w: " ".join(map(str, config["dataset"]["synthetic"]["shape"])),
        log:
            f"{LOGS}/synthesize.log",
        shell:
            "python -m kdseg synthesize --out {output}"
            " --n-cases {params.spec[n_cases]} --shape {params.shape}"
            " --seed {params.spec[seed]} --difficulty {params.spec[difficulty]}"
            " --no-enhancing-fraction {params.spec[no_enhancing_fraction]}"
            " --threads {threads} > {log} 2>&1"


rule preprocess:
    input:
        raw=f"{DATA}/raw" if SYNTHETIC else [],
        manifest=config["dataset"]["manifest"] or [],
    output:
        manifest=f"{DATA}/preprocessed/manifest.csv",
        fingerprint=f"{DATA}/preprocessed/dataset.json",
    threads: 1
    resources:
        # one case in memory (about 4x its float32 size: < 1 GB for BraTS), ~1 s per case
        mem_mb=lambda w, attempt: 3000 * attempt,
        runtime=lambda w, attempt: 60 * attempt,
    params:
        blocks=dataset_blocks(),
    log:
        f"{LOGS}/preprocess.log",
    shell:
        "python -m kdseg preprocess --config-json {params.blocks:q}"
        " --out $(dirname {output.manifest}) --threads {threads} > {log} 2>&1"


localrules:
    make_splits,


rule make_splits:
    input:
        manifest=f"{DATA}/preprocessed/manifest.csv",
        file=config["splits"]["file"] or [],
    output:
        f"{DATA}/splits.json",
    params:
        s=config["splits"],
        file=lambda w, input: f"--file {input.file}" if input.file else "",
    log:
        f"{LOGS}/splits.log",
    shell:
        "python -m kdseg split --manifest {input.manifest} --out {output}"
        " --folds {params.s[folds]} --test-fraction {params.s[test_fraction]}"
        " --val-fraction {params.s[val_fraction]} --seed {params.s[seed]} {params.file}"
        " > {log} 2>&1"
