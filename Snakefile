# kdseg: knowledge distillation from multi-modal to fewer-modal 3D segmentation networks.
#
#   data        synthesize (built-in dataset) -> preprocess -> splits
#   tracking    MLflow DB + experiment, created once before any parallel job
#   teacher     all modalities, per fold x seed
#   student     per modality subset x method x fold x seed (run configs from config.yaml)
#   evaluate    predictions in original geometry -> per-case metrics (+ MLflow test metrics)
#   summary     tables + paired statistics + ranking in results/<dataset>/summary/,
#               figures and the HTML report in results/<dataset>/report/
#
# Usage: snakemake --cores 2 [--configfile config/other.yaml]   (see README.md)

configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


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
        f"{DATA}/report/index.html",
    default_target: True


onsuccess:
    summary = Path(f"{DATA}/summary/comparison.md")
    if summary.exists():
        print(f"\n{summary}:\n\n{summary.read_text()}")
        print(f"Report: {DATA}/report/index.html")
