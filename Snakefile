# kdseg: knowledge distillation from multi-modal to fewer-modal 3D segmentation networks.
#
#   data        synthesize (built-in dataset) -> preprocess -> splits
#   tracking    MLflow DB + experiment, created once before any parallel job
#   teacher     all modalities, per fold x seed
#   student     per modality subset x method x fold x seed (run configs from config.yaml)
#   evaluate    predictions in original geometry -> per-case metrics (+ MLflow test metrics)
#   summary     comparison tables in results/<dataset>/summary/
#
# Usage: snakemake --cores 2 [--configfile config/other.yaml]   (see README.md)

configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/student.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/summary.smk"


rule all:
    input:
        f"{DATA}/summary/comparison.md",
    default_target: True


onsuccess:
    summary = Path(f"{DATA}/summary/comparison.md")
    if summary.exists():
        print(f"\n{summary}:\n\n{summary.read_text()}")
