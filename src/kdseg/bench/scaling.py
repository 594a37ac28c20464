"""How the workflow's cost grows with cases, subsets, methods and folds, from measured units.

A benchmark's compute is a sum of units the other sections measure: optimisation steps (per
method, ``train_step``), sliding-window predictions and evaluations of a case (``inference``,
``evaluation``), preprocessing a case (``preprocess``) and the start-up of one Snakemake job
(measured here: a fresh interpreter importing what ``kdseg train`` imports). :func:`estimate`
counts the units a design implies — the same runs, validations, test predictions and jobs the
workflow schedules — and multiplies. Nothing is fitted, so a check against a measured
``make run`` says how complete the model is (``docs/performance.md``).

Units measured at another patch or case size are scaled by voxel count (sliding-window and
convolution cost grow about linearly with volume); rows that rely on such a scaling say so.
"""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from kdseg.bench.common import BenchOptions, Row, SectionResult

SECTION = "scaling"
FULL_BRATS = {"cases": 285, "subsets": 15, "folds": 5, "seeds": 1}
"""The issue's full benchmark: BraTS 2018's 285 training cases, all 15 modality subsets, the
six methods, 5-fold cross-validation (protocol: ``config/brats2021.yaml``, 128^3 patches,
250 epochs x 250 steps)."""
SUBSET_COUNTS = {4: 15}  # non-empty subsets of 4 modalities


@dataclass(frozen=True)
class Design:
    """What a config asks the workflow to compute (counts, not files).

    Attributes:
        cases: cases in the dataset.
        test_cases_per_run: test cases each run predicts and evaluates.
        val_cases: validation cases predicted at each validation.
        folds, seeds, subsets: as in the config.
        methods: method kind of every student method.
        student_steps, teacher_steps: optimisation steps of one run.
        validations: validations per run.
        patch_voxels: voxels of one training patch (batch size is part of the measured step).
        case_voxels: voxels of one (cropped) case.
    """

    cases: int
    test_cases_per_run: float
    val_cases: int
    folds: int
    seeds: int
    subsets: int
    methods: tuple[str, ...]
    student_steps: int
    teacher_steps: int
    validations: int
    patch_voxels: int
    case_voxels: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any], case_voxels: int) -> Design:
        """The design of a (schema-validated) workflow config."""
        from kdseg.config import resolved_methods, student_subsets

        cases = int(config["dataset"]["synthetic"]["n_cases"]
                    if config["dataset"]["source"] == "synthetic"
                    else config["dataset"].get("n_cases", 0))
        return cls.with_cases(config, cases, case_voxels,
                              subsets=len(student_subsets(config)),
                              methods=tuple(m["kind"] for m in resolved_methods(config).values()))

    @classmethod
    def with_cases(cls, config: Mapping[str, Any], cases: int, case_voxels: int, subsets: int,
                   methods: tuple[str, ...]) -> Design:
        splits, train = config["splits"], config["train"]
        teacher_train = {**train, **config.get("teacher", {}).get("train", {})}
        folds = int(splits["folds"])
        test = cases / folds if folds >= 2 else round(cases * splits["test_fraction"])
        n_val = round((cases - test) * splits["val_fraction"])
        val_cases = min(n_val, int(train["max_val_cases"]))
        epochs, every = int(train["epochs"]), int(train["val_every"])
        validations = sum(1 for e in range(epochs) if (e + 1) % every == 0 or e + 1 == epochs)
        return cls(cases=cases, test_cases_per_run=test, val_cases=val_cases, folds=folds,
                   seeds=len(config["seeds"]), subsets=subsets, methods=methods,
                   student_steps=epochs * int(train["iterations_per_epoch"]),
                   teacher_steps=int(teacher_train["epochs"])
                   * int(teacher_train["iterations_per_epoch"]),
                   validations=validations if val_cases else 0,
                   patch_voxels=math.prod(train["patch_size"]), case_voxels=case_voxels)

    @property
    def teacher_runs(self) -> int:
        return self.folds * self.seeds

    @property
    def student_runs(self) -> int:
        return self.subsets * len(self.methods) * self.folds * self.seeds

    def jobs(self) -> int:
        """Snakemake jobs that start a Python process: preprocess (+ synthesize, split,
        tracking), per run: run config, train, predict, evaluate; summarize, report."""
        return sum(self.jobs_by_start().values())

    def jobs_by_start(self) -> dict[str, int]:
        """The jobs by what their process imports before it works: ``network`` jobs (train,
        predict: torch and MONAI, whose package import loads every MONAI submodule),
        ``evaluate`` jobs (scipy, MLflow), ``light`` ones (run configs, splits, ...)."""
        runs = self.teacher_runs + self.student_runs
        return {"network": 2 * runs, "evaluate": runs, "light": 4 + runs + 2}


@dataclass(frozen=True)
class UnitCosts:
    """Measured cost of one unit of work.

    ``step_s`` maps ``teacher`` and every method kind to s/step at ``patch_voxels``. The
    per-case costs are seconds per million voxels of a case (each section measured its own
    case size), since sliding windows, region masks and normalisation all grow with volume.
    """

    step_s: Mapping[str, float]
    patch_voxels: int
    predict_s_per_mvox: float
    evaluate_s_per_mvox: float
    preprocess_s_per_mvox: float
    job_start_s: Mapping[str, float]


def estimate(design: Design, costs: UnitCosts, parallel_jobs: int = 1) -> dict[str, float]:
    """Seconds of each kind of work for ``design``; ``wall_s`` with ``parallel_jobs`` jobs at a
    time (preprocessing is one job; everything else spreads evenly)."""
    step_scale = design.patch_voxels / costs.patch_voxels
    mvox = design.case_voxels / 1e6
    predict = costs.predict_s_per_mvox * mvox
    runs_per_method = design.subsets * design.folds * design.seeds
    train = design.teacher_runs * design.teacher_steps * costs.step_s["teacher"] * step_scale
    train += sum(runs_per_method * design.student_steps * costs.step_s[m] * step_scale
                 for m in design.methods)
    runs = design.teacher_runs + design.student_runs
    out = {
        "train_s": train,
        "validate_s": runs * design.validations * design.val_cases * predict,
        "predict_s": runs * design.test_cases_per_run * predict,
        "evaluate_s": runs * design.test_cases_per_run * costs.evaluate_s_per_mvox * mvox,
        "preprocess_s": design.cases * costs.preprocess_s_per_mvox * mvox,
        "job_start_s": sum(n * costs.job_start_s[kind]
                           for kind, n in design.jobs_by_start().items()),
    }
    total = sum(out.values())
    out["total_s"] = total
    out["wall_s"] = out["preprocess_s"] + (total - out["preprocess_s"]) / parallel_jobs
    out["steps"] = float(design.teacher_runs * design.teacher_steps
                         + runs_per_method * design.student_steps * len(design.methods))
    return out


JOB_IMPORTS = {
    "network": "import kdseg.training.loop, kdseg.tracking, kdseg.inference.predict",
    "evaluate": "import kdseg.evaluation.evaluate, kdseg.tracking.sync, mlflow",
    "light": "import kdseg.cli, kdseg.config",
}
"""What a job of each start kind (:meth:`Design.jobs_by_start`) imports before it works."""


def job_start_seconds(repeats: int = 2) -> dict[str, float]:
    """Median wall time of a fresh interpreter importing what each kind of job imports."""
    out = {}
    for kind, code in JOB_IMPORTS.items():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            times.append(time.perf_counter() - t0)
        out[kind] = statistics.median(times)
    return out


def _per_mvox(previous: Mapping[str, SectionResult], section: str) -> float:
    """Seconds per million case voxels that ``section`` measured (NaN if it did not run)."""
    res = previous.get(section)
    if res is None:
        return math.nan
    meta = res.meta
    if section == "inference":  # kdseg's sliding window over the teacher's full-size case
        seconds, shape = meta["teacher"]["wall_median_s"]["kdseg"], meta["shape"]
    elif section == "evaluation":  # evaluate_case: 5 metrics x 3 regions from label maps
        seconds, shape = meta["median_s"]["kdseg_evaluate_case"], meta["shape"]
    else:  # preprocess
        seconds, shape = meta["s_per_case"], meta["case_shape"]
    return float(seconds) / (math.prod(shape) / 1e6)


def unit_costs(previous: Mapping[str, SectionResult],
               job_start_s: Mapping[str, float]) -> UnitCosts:
    """The units measured by the other sections of this run (NaN where one did not run)."""
    step = dict(previous["train_step"].meta["step_s"]) if "train_step" in previous else {}
    if "baseline" in step:
        # The teacher is the baseline network with 4 input channels: the same cost per step
        # to within the first convolution (README cost table: 0.99x).
        step.setdefault("teacher", step["baseline"])
    patch = previous["train_step"].meta["patch_size"] if "train_step" in previous else [1]
    return UnitCosts(step_s=step, patch_voxels=math.prod(patch),
                     predict_s_per_mvox=_per_mvox(previous, "inference"),
                     evaluate_s_per_mvox=_per_mvox(previous, "evaluation"),
                     preprocess_s_per_mvox=_per_mvox(previous, "preprocess"),
                     job_start_s=job_start_s)


def _load_config(path: Path, preset: Path | None = None) -> dict[str, Any]:
    """The config at ``path``, with ``preset`` layered over it the way Snakemake layers
    ``--configfile`` files (``update_config``), validated (schema defaults filled)."""
    from snakemake.utils import update_config, validate

    from kdseg.bench.fixtures import schema_path

    config = yaml.safe_load(path.read_text())
    if preset is not None:
        update_config(config, yaml.safe_load(preset.read_text()))
    validate(config, str(schema_path(path)))
    return config


def _hours(seconds: float) -> float:
    return seconds / 3600


def run(opts: BenchOptions, previous: dict[str, SectionResult]) -> SectionResult:
    config_path = Path(opts.config)
    config = _load_config(config_path)
    costs = unit_costs(previous, job_start_seconds(1 if opts.quick else 3))
    syn_shape = config["dataset"]["synthetic"]["shape"]
    # the default synthetic case after the brain crop (~93 % of its grid, docs/datasets.md)
    default = Design.from_config(config, case_voxels=int(0.93 * math.prod(syn_shape)))
    cores = 2
    rows_out, table = [], []
    variants = {
        "this config": default,
        "285 cases": replace(default, cases=285,
                             test_cases_per_run=default.test_cases_per_run * 285 / default.cases),
        "15 subsets": replace(default, subsets=15),
        "1 method (baseline)": replace(default, methods=("baseline",)),
        "5 folds": Design.with_cases({**config, "splits": {**config["splits"], "folds": 5}},
                                     default.cases, default.case_voxels, default.subsets,
                                     default.methods),
    }
    for name, design in variants.items():
        est = estimate(design, costs, parallel_jobs=cores)
        table.append({"design": name, "cases": design.cases, "subsets": design.subsets,
                      "methods": len(design.methods), "folds": design.folds,
                      "runs": design.teacher_runs + design.student_runs, "jobs": design.jobs(),
                      **{k[:-2] + "_h": _hours(v) for k, v in est.items()
                         if k != "steps"}, "steps": est["steps"]})
    base_wall = table[0]["wall_h"]
    for row in table:
        rows_out.append(Row(SECTION, f"{row['design']}: wall at --cores {cores}",
                            row["wall_h"] * 60, "min", "this config", base_wall * 60,
                            row["wall_h"] / base_wall if base_wall > 0 else math.nan,
                            note=f"{row['runs']} runs, {row['jobs']} jobs, "
                                 f"train {row['train_h'] * 60:.1f} min of "
                                 f"{row['total_h'] * 60:.1f} min compute"))

    full_rows, full_meta = _full_brats(config_path, costs, previous)
    rows_out += full_rows
    meta = {"unit_costs": {**costs.__dict__, "step_s": dict(costs.step_s),
                           "job_start_s": dict(costs.job_start_s)},
            "cores": cores, "full_brats": full_meta}
    return SectionResult(rows_out, pd.DataFrame(table), meta)


def _full_brats(config_path: Path, costs: UnitCosts,
                previous: Mapping[str, SectionResult]) -> tuple[list[Row], dict[str, Any]]:
    """285 cases x 15 subsets x 6 methods x 5 folds with the brats2021 preset's protocol."""
    preset = config_path.parent / "brats2021.yaml"
    config = _load_config(config_path, preset)
    methods = ("baseline", "logit_kd", "kdnet", "pmkl", "ummkd", "barlow_kd")
    config["splits"] = {**config["splits"], "folds": FULL_BRATS["folds"]}
    config["seeds"] = [0]
    # BraTS cases after the brain crop: about 140 x 170 x 140 of 240 x 240 x 155.
    design = Design.with_cases(config, FULL_BRATS["cases"], 140 * 170 * 140,
                               FULL_BRATS["subsets"], methods)
    steps = estimate(design, replace(costs, step_s=dict.fromkeys([*methods, "teacher"], 1.0),
                                     patch_voxels=design.patch_voxels))["steps"]
    rows = [Row(SECTION, "full BraTS: optimisation steps", steps, "steps",
                note=f"{design.teacher_runs} teachers + {design.student_runs} students x "
                     f"{design.student_steps} steps at 128^3 (config/brats2021.yaml)")]
    meta: dict[str, Any] = {"design": design.__dict__, "steps": steps}
    gpu = previous.get("train_step")
    gpu_step = gpu.meta.get("gpu_step_s") if gpu is not None else None
    if gpu_step:
        ratios = {m: costs.step_s[m] / costs.step_s["baseline"] for m in methods}
        gpu_kd = gpu.meta.get("gpu_kd_ratio")  # type: ignore[union-attr]
        step_s = {m: gpu_step * (gpu_kd if gpu_kd and m in ("logit_kd", "kdnet", "pmkl")
                                 else ratios[m]) for m in methods}
        step_s["teacher"] = gpu.meta.get("gpu_teacher_step_s", gpu_step)  # type: ignore[union-attr]
        gpu_costs = replace(costs, step_s=step_s, patch_voxels=design.patch_voxels)
        est = estimate(design, gpu_costs, parallel_jobs=1)
        meta["gpu_estimate_h"] = {k: _hours(v) for k, v in est.items() if k != "steps"}
        rows.append(Row(SECTION, "full BraTS on this GPU: training", _hours(est["train_s"]) / 24,
                        "days", note=f"{gpu_step:.3f} s/step measured at 128^3; method ratios "
                                     "from the CPU rows where not measured on the GPU"))
    else:
        rows.append(Row(SECTION, "full BraTS on one GPU", math.nan, "days",
                        note="not measured: no GPU step time (run `kdseg bench --device cuda`);"
                             f" days = {steps:.3g} steps x (s/step) / 86400"))
    return rows, meta
