# Config validation, wildcard constraints and the helpers the other rule files use.
import json
from pathlib import Path

from snakemake.utils import min_version, validate

from kdseg import config as kdcfg
from kdseg.report.files import FIGURES, SUMMARY_FILES

min_version("9.0")

# Structure and defaults (JSON schema), then what a schema cannot check (method options, subsets).
validate(config, "../schemas/config.schema.yaml")
try:
    kdcfg.check_config(config)
except kdcfg.ConfigError as err:
    raise WorkflowError(f"config error: {err}") from None

DATA = kdcfg.data_dir(config)
SUBSETS = kdcfg.student_subsets(config)
METHODS = kdcfg.resolved_methods(config)
FOLDS = list(range(config["splits"]["folds"]))
SEEDS = list(config["seeds"])
TRACKING_JSON = f"{config['results_dir']}/tracking/experiment.json"
# Run-folder patterns; kdseg.config owns the layout (all_runs() lists the same folders).
TEACHER_RUN = kdcfg.teacher_dir(config, "{fold}", "{seed}")
STUDENT_RUN = kdcfg.student_dir(config, "{subset}", "{method}", "{fold}", "{seed}")
LOGS = f"{config['results_dir']}/logs/{config['dataset']['name']}"
SUMMARY = f"{DATA}/summary"
REPORT = f"{DATA}/report"
# Summary tables shown in `snakemake --report` (file -> label); the CSVs stay plain outputs.
REPORTED_TABLES = {"comparison.md": "digest", "results.md": "per model and region",
                   "subsets.md": "per modality subset"}


wildcard_constraints:
    subset="[A-Za-z0-9_+-]+",
    method="[A-Za-z0-9_-]+",
    fold=r"\d+",
    seed=r"\d+",
    run=r"(teacher|student/[A-Za-z0-9_+-]+/[A-Za-z0-9_-]+)/fold\d+/seed\d+",


def as_json(data):
    """Deterministic JSON for `params:` (Snakemake reruns a job when its params change)."""
    return json.dumps(data, sort_keys=True)


def teacher_model(wildcards):
    """The frozen teacher's model.pt when the student's method distills from one, else []."""
    if not kdcfg.method_needs_teacher(METHODS[wildcards.method]):
        return []
    return f"{kdcfg.teacher_dir(config, int(wildcards.fold), int(wildcards.seed))}/model.pt"


def all_runs():
    """Every run folder of the benchmark: teachers first (none on unpaired data), then
    subset x method x fold x seed."""
    runs = []
    if kdcfg.has_teacher(config):
        runs += [kdcfg.teacher_dir(config, f, s) for f in FOLDS for s in SEEDS]
    runs += [
        kdcfg.student_dir(config, subset, method, f, s)
        for subset in SUBSETS
        for method in METHODS
        for f in FOLDS
        for s in SEEDS
    ]
    return runs


def dataset_blocks():
    """The config keys preprocessing reads, and only those: they are params, so a change
    reruns preprocessing and with it every training job. Evaluation regions, the dataset's
    name and interpolation settings without resampling do not change the arrays."""
    dataset = {k: v for k, v in config["dataset"].items() if k not in ("synthetic", "name")}
    if isinstance(dataset["labels"], dict):
        dataset["labels"] = {k: v for k, v in dataset["labels"].items() if k != "regions"}
    if config["dataset"]["source"] == "synthetic":
        dataset["root"] = f"{DATA}/raw"
    preprocess = dict(config["preprocess"])
    if preprocess.get("target_spacing") is None:
        preprocess.pop("image_interpolation", None)
        preprocess.pop("label_interpolation", None)
    return as_json({"dataset": dataset, "preprocess": preprocess})
