"""Every dataset adapter end to end: generated files of each real-world layout go through the
whole Snakemake benchmark (preprocess -> teacher -> students -> predictions -> statistics ->
report), and the predictions come back in each case's original geometry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from tests.workflow.test_workflow import REPO, snakemake

pytestmark = pytest.mark.workflow

TINY = {
    "splits": {"folds": 1, "test_fraction": 0.34, "val_fraction": 0.25, "seed": 0},
    "model": {"filters": [4, 8, 16]},
    "train": {"patch_size": [16, 16, 16], "batch_size": 2, "epochs": 1,
              "iterations_per_epoch": 2, "val_every": 1, "max_val_cases": 1},
    "teacher": {"train": {"iterations_per_epoch": 2}},
    "statistics": {"n_boot": 50, "ranking_boot": 20},
}
# The manifest layout's label map (kdseg.data.layouts.LABEL_MAPS["manifest"]).
SYN10 = {"name": "syn10", "classes": {"background": 0, "NCR": 10, "ED": 20, "ET": 30},
         "regions": {"WT": [10, 20, 30], "TC": [10, 30], "ET": [30]}}

# layout -> (synthesize flags, dataset block, students block, preprocess block)
CASES = {
    "brats2023": (["--orientation", "mixed", "--anisotropic"],
                  {"source": "brats", "labels": "brats2023"},
                  {"subsets": ["flair"], "methods": ["baseline", "logit_kd"]},
                  {"target_spacing": [5.0, 5.0, 5.0]}),
    "msd": (["--orientation", "mixed"],
            {"source": "msd", "labels": "msd_brats"},
            {"subsets": ["t1ce"], "methods": ["baseline", "kdnet"]}, {}),
    "manifest": (["--orientation", "mixed"],
                 {"source": "manifest", "manifest": "MANIFEST", "labels": SYN10,
                  "modalities": ["t1w", "t1gd", "t2w", "flair"]},
                 {"subsets": ["t1gd"], "methods": ["baseline", "logit_kd"]}, {}),
    "unpaired": (["--n-cases", "8"],
                 {"source": "manifest", "manifest": "MANIFEST", "unpaired": True,
                  "modalities": ["t1ce", "flair"]},
                 {"subsets": ["t1ce", "flair"], "methods": ["baseline", "ummkd_unpaired"]},
                 {}),
}


def _generate(layout: str, flags: list[str], out: Path) -> None:
    cmd = [sys.executable, "-m", "kdseg", "synthesize", "--out", str(out), "--layout", layout,
           "--n-cases", "6", "--shape", "32", "36", "32", "--seed", "3", *flags]
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture(scope="module", params=sorted(CASES))
def adapter_run(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, dict]:
    layout = request.param
    flags, dataset, students, preprocess = CASES[layout]
    workdir = tmp_path_factory.mktemp(f"adapter_{layout}")
    raw = workdir / "external" / layout
    _generate(layout, flags, raw)
    dataset = {**dataset, "name": layout, "root": str(raw)}
    if dataset.get("manifest") == "MANIFEST":
        dataset["manifest"] = str(raw / "manifest.csv")
    config = {**TINY, "results_dir": "results", "dataset": dataset, "students": students,
              "preprocess": preprocess,
              "methods": {"baseline": {"kind": "baseline"}, "logit_kd": {"kind": "logit_kd"},
                          "kdnet": {"kind": "kdnet"},
                          "ummkd_unpaired": {"kind": "ummkd", "unpaired": True}},
              "tracking": {"uri": f"sqlite:///{workdir}/results/mlflow.db",
                           "artifact_root": f"{workdir}/results/mlartifacts"}}
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    snakemake("--cores", "2", configs=(path,), cwd=workdir)
    return layout, workdir, config


def test_adapter_benchmark_completes(adapter_run: tuple[str, Path, dict]) -> None:
    layout, workdir, config = adapter_run
    data = workdir / "results" / layout
    comparison = (data / "summary/comparison.md").read_text()
    assert (data / "report/index.html").stat().st_size > 10_000
    runs = sorted((data / "runs").glob("**/metrics_per_case.csv"))
    n_students = len(config["students"]["subsets"]) * len(config["students"]["methods"])
    teacher = not config["dataset"].get("unpaired", False)
    assert len(runs) == n_students + teacher
    for csv in runs:
        metrics = pd.read_csv(csv, dtype={"case": str})
        assert metrics["value"].notna().all(), csv
    fingerprint = (data / "preprocessed/dataset.json").read_text()
    assert f'"source": "{config["dataset"]["source"]}"' in fingerprint
    for subset in config["students"]["subsets"]:
        assert subset in comparison


def test_predictions_come_back_in_the_original_geometry(
        adapter_run: tuple[str, Path, dict]) -> None:
    layout, workdir, config = adapter_run
    data = workdir / "results" / layout
    checked = 0
    for pred in sorted((data / "runs").glob("**/predictions/*.nii.gz")):
        case = pred.name.removesuffix(".nii.gz")
        record = yaml.safe_load((data / "preprocessed" / f"{case}.json").read_text())
        reference = nib.load(record["source_files"]["seg"]["path"])
        restored = nib.load(pred)
        assert restored.shape == reference.shape[:3]
        np.testing.assert_array_equal(restored.affine, reference.affine)
        assert nib.aff2axcodes(restored.affine) == nib.aff2axcodes(reference.affine)
        values = set(np.unique(np.asarray(restored.dataobj)).tolist())
        labels = config["dataset"].get("labels", "brats")
        allowed = set(labels["classes"].values()) if isinstance(labels, dict) else (
            {0, 1, 2, 3} if labels in ("brats2023", "msd_brats") else {0, 1, 2, 4})
        assert values <= allowed
        checked += 1
    assert checked > 0


def test_unpaired_students_see_only_their_modality(adapter_run: tuple[str, Path, dict]) -> None:
    layout, workdir, _ = adapter_run
    if layout != "unpaired":
        pytest.skip("unpaired layout only")
    data = workdir / "results" / layout
    manifest = pd.read_csv(data / "preprocessed/manifest.csv", dtype={"case": str})
    has = dict(zip(manifest["case"], manifest["modalities"], strict=True))
    assert set(has.values()) == {"t1ce", "flair"}
    assert not (data / "runs/teacher").exists()
    for subset in ("t1ce", "flair"):
        for method in ("baseline", "ummkd_unpaired"):
            preds = data / f"runs/student/{subset}/{method}/fold0/seed0/predictions"
            cases = [p.name.removesuffix(".nii.gz") for p in preds.glob("*.nii.gz")]
            assert cases and all(has[c] == subset for c in cases)


def test_paired_methods_are_refused_on_unpaired_data(tmp_path: Path) -> None:
    config = {"dataset": {"name": "u", "source": "manifest", "manifest": "m.csv",
                          "unpaired": True, "modalities": ["t1ce", "flair"]},
              "students": {"subsets": ["t1ce"], "methods": ["baseline", "kdnet"]}}
    path = tmp_path / "u.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake("-n", configs=(path,), cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "'kdnet' (kdnet) needs paired inputs" in proc.stdout + proc.stderr


def test_repo_presets_dry_run(tmp_path: Path) -> None:
    """The preset configs parse and plan (their data is not here: point them at a generated
    folder of the right layout)."""
    for preset, layout in (("brats2018", "brats"), ("brats2021", "brats"),
                           ("msd_task01", "msd")):
        raw = tmp_path / preset
        _generate(layout, [], raw)
        override = tmp_path / f"{preset}.yaml"
        override.write_text(yaml.safe_dump({"dataset": {"root": str(raw)},
                                            "splits": {"file": None}}))
        proc = snakemake("-n", configs=(REPO / f"config/{preset}.yaml", override),
                         cwd=tmp_path, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
