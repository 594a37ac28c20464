"""The Snakemake workflow: lint, dry runs of the default config, bad configs, and one real
end-to-end run on a tiny config (including 'change one method -> only its jobs rerun')."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.workflow


def snakemake(*args: str, configs: tuple[Path, ...] = (), cwd: Path = REPO,
              check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the venv's snakemake on the repo's Snakefile with the venv first on PATH.

    ``configs`` are layered over config/config.yaml (one ``--configfile`` flag: Snakemake keeps
    only the last flag's files when it is repeated).
    """
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(bindir / "snakemake"), "-s", str(REPO / "Snakefile"), "--configfile",
           str(REPO / "config/config.yaml"), *map(str, configs), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    """Parse Snakemake's 'Job stats' table into {rule: count}."""
    table = output.split("Job stats:")[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_lint_has_no_findings_besides_software_deployment() -> None:
    proc = snakemake("--lint", check=False)
    findings = set(re.findall(r"^\s+\* (.+?):?$", proc.stdout + proc.stderr, re.M))
    # The project pins its software in constraints.txt (a .venv), not per-rule conda envs.
    assert findings <= {"Specify a conda environment or container for each rule."}, findings


def test_default_config_dry_run_job_counts(tmp_path: Path) -> None:
    proc = snakemake("-n", "--cores", "2", cwd=tmp_path)
    counts = job_counts(proc.stdout)
    assert counts == {
        "synthesize": 1, "preprocess": 1, "make_splits": 1, "init_tracking": 1,
        "teacher_run_config": 1, "train_teacher": 1,
        "student_run_config": 30, "train_student": 30,  # 5 subsets x 6 methods
        "predict": 31, "evaluate": 31, "summarize": 1, "report": 1, "all": 1, "total": 131,
    }


@pytest.mark.parametrize("method, waits", [("logit_kd", True), ("kdnet", True), ("pmkl", True),
                                           ("baseline", False), ("ummkd", False),
                                           ("barlow_kd", False)])
def test_only_two_stage_methods_wait_for_the_teacher(tmp_path: Path, method: str,
                                                     waits: bool) -> None:
    target = f"results/synthetic/runs/student/flair+t1ce/{method}/fold0/seed0/model.pt"
    counts = job_counts(snakemake("-n", "--cores", "2", target, cwd=tmp_path).stdout)
    assert counts["train_student"] == 1
    assert ("train_teacher" in counts) == waits


def test_all_subsets_two_seeds_two_folds_dry_run(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "big.yaml", {"students": {"subsets": "all",
                                                            "methods": ["baseline", "logit_kd"]},
                                               "seeds": [0, 1], "splits": {"folds": 2}})
    counts = job_counts(snakemake("-n", "--cores", "2", configs=(cfg,), cwd=tmp_path).stdout)
    assert counts["train_teacher"] == 4  # folds x seeds
    assert counts["train_student"] == 15 * 2 * 2 * 2
    assert counts["evaluate"] == 4 + 120


@pytest.mark.parametrize("override, message", [
    ({"trian": {"epochs": 1}}, "trian"),
    ({"train": {"epochs": 0}}, "epochs"),
    ({"students": {"subsets": ["t1", "t7"], "methods": ["baseline"]}}, "students.subsets[1]"),
    ({"students": {"subsets": ["t1"], "methods": ["kd_net"]}}, "method 'kd_net' is not defined"),
    ({"methods": {"logit_kd": {"temprature": 2}}}, "unknown option(s) ['temprature']"),
    ({"dataset": {"name": "x", "source": "brats"}}, "dataset.root is required"),
])
def test_bad_config_fails_before_any_job_naming_the_key(tmp_path: Path, override: dict,
                                                         message: str) -> None:
    cfg = write_config(tmp_path / "bad.yaml", override)
    proc = snakemake("-n", configs=(cfg,), cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Run the whole tiny benchmark once (module-scoped: the tests below inspect it)."""
    workdir = tmp_path_factory.mktemp("e2e")
    text = (REPO / "tests/workflow/tiny.yaml").read_text().replace("RESULTS_DIR", "results")
    cfg = workdir / "tiny.yaml"
    cfg.write_text(text.replace("sqlite:///results", f"sqlite:///{workdir}/results"))
    snakemake("--cores", "2", configs=(cfg,), cwd=workdir)
    return workdir, cfg


def test_end_to_end_outputs(tiny_run: tuple[Path, Path]) -> None:
    workdir, _ = tiny_run
    data = workdir / "results/tiny"
    summary = pd.read_csv(data / "summary/comparison.csv")
    models = summary[["stage", "subset", "method"]].drop_duplicates().values.tolist()
    assert models == [["teacher", "flair+t1+t1ce+t2", "teacher"]] + [
        ["student", subset, method] for subset in ("t1", "flair")
        for method in ("baseline", "logit_kd", "ummkd", "barlow_kd")]
    assert set(summary["region"]) == {"WT", "TC", "ET"}
    assert set(summary["metric"]) == {"dice", "hd95", "nsd", "sensitivity", "specificity"}
    markdown = (data / "summary/comparison.md").read_text()
    assert "| teacher (flair+t1+t1ce+t2) |" in markdown
    assert "**Δ DICE vs baseline**" in markdown and "**Training cost**" in markdown
    paired = pd.read_csv(data / "summary/paired_vs_baseline.csv")
    assert set(paired["method"]) == {"logit_kd", "ummkd", "barlow_kd"}
    assert len(paired) == 2 * 3 * 3 * 5  # subsets x methods x regions x metrics
    vs_teacher = pd.read_csv(data / "summary/paired_vs_teacher.csv")
    assert len(vs_teacher) == 2 * 4 * 3 * 5 and set(vs_teacher["reference"]) == {"teacher"}
    ranking = pd.read_csv(data / "summary/ranking.csv")
    assert ranking["subset"].tolist() == ["t1"] * 4 + ["flair"] * 4 + ["all subsets"] * 4
    assert "\\toprule" in (data / "summary/results.tex").read_text()
    assert "| subset | t1 | t1ce | t2 | flair |" in (data / "summary/subsets.md").read_text()
    assert len(pd.read_csv(data / "summary/cost.csv")) == 9
    long = pd.read_csv(data / "summary/metrics_long.csv")
    assert {"case", "region", "metric", "value", "empty_state"} <= set(long.columns)
    # predictions are in the original geometry of the source files
    run = data / "runs/student/flair/logit_kd/fold0/seed0"
    for pred in (run / "predictions").glob("*.nii.gz"):
        case = pred.name.removesuffix(".nii.gz")
        ref = nib.load(data / "raw" / case / f"{case}_seg.nii.gz")
        assert nib.load(pred).shape == ref.shape
        assert (nib.load(pred).affine == ref.affine).all()
    for name in ("run_config.yaml", "model.pt", "history.csv", "run.json",
                 "metrics_per_case.csv", "test_metrics.json"):
        assert (run / name).exists(), name
    assert (workdir / "results/logs/tiny/student/flair/logit_kd/fold0_seed0.train.log").exists()
    # the report: one self-contained page (figures embedded) + PNG/PDF figures
    page = (data / "report/index.html").read_text()
    assert page.count('src="data:image/png;base64,') == 5
    for section in ("What the numbers say", "Design of the benchmark", "Statistical methods",
                    "Compute cost", "Ranking", "flair+t1+t1ce+t2"):
        assert section in page, section
    for name in ("paired_differences_dice", "heatmap_dice", "ranking_stability", "overlays"):
        assert (data / f"report/figures/{name}.png").stat().st_size > 10_000
        assert (data / f"report/figures/{name}.pdf").exists()


def test_snakemake_report_holds_the_annotated_outputs(tiny_run: tuple[Path, Path]) -> None:
    workdir, cfg = tiny_run
    out = workdir / "snakemake-report.html"
    proc = snakemake("--report", str(out), configs=(cfg,), cwd=workdir)
    log = proc.stdout + proc.stderr
    for name in ("comparison.md", "results.md", "subsets.md", "index.html", "overlays.png",
                 "ranking_stability.png"):
        assert f"Adding {name}" in log, name
    assert out.stat().st_size > 100_000


def test_end_to_end_mlflow_runs(tiny_run: tuple[Path, Path]) -> None:
    from mlflow.tracking import MlflowClient

    workdir, _ = tiny_run
    client = MlflowClient(f"sqlite:///{workdir}/results/mlflow.db")
    experiment = client.get_experiment_by_name("kdseg")
    runs = client.search_runs([experiment.experiment_id])
    summary = [r for r in runs if r.data.tags["kdseg.stage"] == "summary"]
    runs = [r for r in runs if r.data.tags["kdseg.stage"] != "summary"]
    assert len(runs) == 9  # teacher + 2 subsets x 4 methods, no duplicates
    assert len(summary) == 1 and summary[0].info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(summary[0].info.run_id)}
    assert artifacts == {"tables", "figures", "report"}
    assert {"summary/dice/comparisons", "summary/dice/significant_better"} <= set(
        summary[0].data.metrics)
    for r in runs:
        assert r.info.status == "FINISHED"
        assert {"kdseg.stage", "kdseg.method", "kdseg.subset", "kdseg.fold", "kdseg.seed",
                "kdseg.run_key"} <= set(r.data.tags)
        assert {"train/loss", "val/dice/WT", "test/dice/WT", "test/hd95/ET"} <= set(r.data.metrics)
        info = json.loads((workdir / "results/tiny/runs").joinpath(
            *_run_path(r.data.tags)).joinpath("run.json").read_text())
        assert info["run_key"] == r.data.tags["kdseg.run_key"]


def _run_path(tags: dict[str, str]) -> list[str]:
    tail = [f"fold{tags['kdseg.fold']}", f"seed{tags['kdseg.seed']}"]
    if tags["kdseg.stage"] == "teacher":
        return ["teacher", *tail]
    return ["student", tags["kdseg.subset"], tags["kdseg.method"], *tail]


def test_rerun_does_nothing_and_method_change_reruns_only_that_method(
        tiny_run: tuple[Path, Path]) -> None:
    workdir, cfg = tiny_run
    nothing = snakemake("-n", "--cores", "2", configs=(cfg,), cwd=workdir)
    assert "Nothing to be done" in nothing.stdout + nothing.stderr
    changed = yaml.safe_load(cfg.read_text())
    changed["methods"] = {"logit_kd": {"kind": "logit_kd", "temperature": 3.0}}  # not the default
    cfg2 = write_config(workdir / "tiny_t3.yaml", changed)
    counts = job_counts(snakemake("-n", "--cores", "2", configs=(cfg, cfg2), cwd=workdir).stdout)
    assert counts == {"student_run_config": 2, "train_student": 2, "predict": 2, "evaluate": 2,
                      "summarize": 1, "report": 1, "all": 1, "total": 11}


CV_CONFIG = {
    "results_dir": "results",
    "dataset": {"name": "tinycv", "source": "synthetic", "modalities": ["t1ce", "flair"],
                "synthetic": {"n_cases": 8, "shape": [32, 36, 32], "seed": 1,
                              "difficulty": 0.3}},
    "splits": {"folds": 2, "val_fraction": 0.25, "seed": 0},
    "seeds": [0, 1],
    "model": {"filters": [4, 8, 16]},
    "train": {"patch_size": [16, 16, 16], "batch_size": 2, "epochs": 1,
              "iterations_per_epoch": 2, "val_every": 1, "max_val_cases": 1},
    "teacher": {"train": {"iterations_per_epoch": 2}},
    "students": {"subsets": "all", "methods": ["baseline", "logit_kd"]},
    "statistics": {"n_boot": 200, "ranking_boot": 100},
    "report": {"overlay_cases": 2},
    "tracking": {"enabled": False},
}


@pytest.mark.parametrize("modalities", [
    ["t1ce", "flair"],
    pytest.param(["t1", "t1ce", "t2", "flair"], marks=pytest.mark.slow, id="15-subsets"),
])
def test_all_subsets_two_seeds_two_folds_end_to_end(tmp_path: Path,
                                                    modalities: list[str]) -> None:
    """``subsets: all`` x 2 seeds x 2-fold cross-validation, run for real on a tiny size.

    Two modalities keep the default run CI-sized (3 subsets, 16 runs); the ``slow`` variant runs
    all 15 subsets of the four BraTS modalities (124 runs). The full-modality student shares its
    subset with the teacher. Every case is predicted once per model and seed (by the fold that
    did not train on it); seeds are averaged per case and folds pooled in every table.
    """
    from kdseg.config import all_subsets

    config = {**CV_CONFIG, "dataset": {**CV_CONFIG["dataset"], "modalities": modalities}}
    cfg = write_config(tmp_path / "cv.yaml", config)
    # 2 modalities: ~2 min; the slow 15-subset variant: ~15-20 min on 2 cores
    snakemake("--cores", "2", configs=(cfg,), cwd=tmp_path, timeout=3600)
    data = tmp_path / "results/tinycv"
    subsets = all_subsets(modalities)
    splits = json.loads((data / "splits.json").read_text())
    tests = [c for fold in splits for c in fold["test"]]
    assert sorted(tests) == sorted(set(tests)) and len(tests) == 8
    long = pd.read_csv(data / "summary/metrics_long.csv")
    per_model = long[(long["region"] == "WT") & (long["metric"] == "dice")]
    counts = per_model.groupby(["stage", "subset", "method", "seed"])["case"].agg(
        ["count", "nunique"])
    assert (counts["count"] == 8).all() and (counts["nunique"] == 8).all()
    assert len(counts) == 2 + len(subsets) * 2 * 2  # teacher x seeds + subsets x methods x seeds
    summary = pd.read_csv(data / "summary/comparison.csv")
    assert (summary["n"] + summary["n_excluded"] == 8).all()  # folds pooled, seeds averaged
    table = pd.read_csv(data / "summary/subsets.csv")
    rows = table.loc[table["metric"] == "dice", "row"].tolist()
    sizes = range(1, len(modalities) + 1)
    assert rows == subsets + [f"mean ({k} modalit{'y' if k == 1 else 'ies'})" for k in sizes] + [
        "mean (all subsets)"]
    assert [len(s.split("+")) for s in subsets] == sorted(len(s.split("+")) for s in subsets)
    paired = pd.read_csv(data / "summary/paired_vs_baseline.csv")
    assert set(paired["subset"]) == set(subsets) and (paired["n"] == 8).all()
    vs_teacher = pd.read_csv(data / "summary/paired_vs_teacher.csv")
    assert set(vs_teacher["method"]) == {"baseline", "logit_kd"}
    assert (data / "report/index.html").stat().st_size > 50_000


def test_every_computing_job_is_limited_to_its_threads(tmp_path: Path) -> None:
    """Each job that computes passes its rule's ``threads`` to kdseg (kdseg.runtime caps torch
    and BLAS there), so parallel jobs never oversubscribe the cores."""
    cfg = write_config(tmp_path / "workers.yaml", {"train": {"num_workers": 2},
                                                   "resources": {"train_threads": 3}})
    out = snakemake("-n", "-p", "--cores", "8", configs=(cfg,), cwd=tmp_path).stdout
    jobs = re.findall(r"^(?:local)?rule (\w+):\n(.*?)^Shell command: (.+?)$", out, re.M | re.S)
    computing = {"synthesize", "preprocess", "train_teacher", "train_student", "predict",
                 "evaluate", "summarize", "report"}
    seen = set()
    for rule, block, command in jobs:
        if rule not in computing:
            continue
        seen.add(rule)
        declared = re.search(r"^\s+threads: (\d+)$", block, re.M)
        threads = int(declared[1]) if declared else 1
        assert f"--threads {threads} " in command, (rule, threads, command)
        if rule.startswith("train_"):  # torch threads + one core per DataLoader worker
            assert threads == 3 + 2, (rule, threads)
    assert seen == computing
