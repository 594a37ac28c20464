"""The command line: clear one-line errors for bad input, evaluate-folder on any folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from kdseg.cli import main


def test_missing_modality_is_one_clear_error(tmp_path: Path, tiny_data: dict, capsys) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(tiny_data["raw"], raw)
    victim = sorted(raw.glob("*/*_t2.nii.gz"))[0]
    victim.unlink()
    out = tmp_path / "pre"
    code = main(["preprocess", "--root", str(raw), "--out", str(out),
                 "--modalities", "t1", "t1ce", "t2", "flair"])
    err = capsys.readouterr().err
    assert code == 2
    assert "kdseg preprocess: error:" in err and str(victim) in err
    assert "Traceback" not in err
    assert not (out / "manifest.csv").exists()  # nothing downstream runs when validation fails


def test_bad_label_value_names_file(tmp_path: Path, tiny_data: dict, capsys) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(tiny_data["raw"], raw)
    seg_path = sorted(raw.glob("*/*_seg.nii.gz"))[0]
    seg = nib.load(seg_path)
    data = np.asarray(seg.dataobj).copy()
    data[0, 0, 0] = 3  # not a BraTS 2017-2021 label
    nib.save(nib.Nifti1Image(data, seg.affine, seg.header), seg_path)
    code = main(["preprocess", "--root", str(raw), "--out", str(tmp_path / "pre"),
                 "--modalities", "t1", "t1ce", "t2", "flair"])
    err = capsys.readouterr().err
    assert code == 2 and str(seg_path) in err and "[3]" in err


def test_empty_dataset_folder(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    code = main(["preprocess", "--root", str(tmp_path / "empty"), "--out", str(tmp_path / "p"),
                 "--modalities", "t1", "flair"])
    assert code == 2 and str(tmp_path / "empty") in capsys.readouterr().err


def test_evaluate_folder_command(tmp_path: Path, tiny_data: dict) -> None:
    """References predicted perfectly: Dice 1 everywhere (flat <case>.nii.gz predictions)."""
    preds = tmp_path / "preds"
    preds.mkdir()
    cases = sorted(p.name for p in tiny_data["raw"].iterdir() if p.is_dir())[:2]
    for case in cases:
        shutil.copy(tiny_data["raw"] / case / f"{case}_seg.nii.gz", preds / f"{case}.nii.gz")
    out = tmp_path / "metrics.csv"
    proc = subprocess.run([sys.executable, "-m", "kdseg", "evaluate-folder", str(preds),
                           str(tiny_data["raw"]), "--out", str(out)],
                          capture_output=True, text=True, check=True)
    df = pd.read_csv(out)
    assert set(df["case"]) == set(cases)
    assert list(df["metric"].unique()) == ["dice", "hd95", "nsd", "sensitivity", "specificity"]
    assert (df.loc[df["metric"] == "hd95", "value"] == 0.0).all()
    assert (df.loc[df["metric"] != "hd95", "value"] == 1.0).all()
    assert set(df["nsd_tolerance_mm"]) == {1.0}
    assert "dice" in proc.stdout and "specificity" in proc.stdout


def test_nsd_tolerance_option_reaches_rows(tmp_path: Path, tiny_data: dict, capsys) -> None:
    """--nsd-tolerance-mm of evaluate-folder lands in every row; evaluate parses it too."""
    from kdseg.cli import build_parser

    preds = tmp_path / "preds"
    preds.mkdir()
    case = sorted(p.name for p in tiny_data["raw"].iterdir() if p.is_dir())[0]
    shutil.copy(tiny_data["raw"] / case / f"{case}_seg.nii.gz", preds / f"{case}.nii.gz")
    out = tmp_path / "metrics.csv"
    code = main(["evaluate-folder", str(preds), str(tiny_data["raw"]), "--out", str(out),
                 "--nsd-tolerance-mm", "3.5"])
    assert code == 0
    assert set(pd.read_csv(out)["nsd_tolerance_mm"]) == {3.5}
    assert "NSD tolerance 3.5 mm" in capsys.readouterr().out
    args = build_parser().parse_args(["evaluate", "--run-dir", "r", "--predictions", "p",
                                      "--references", "ref", "--out", "o",
                                      "--nsd-tolerance-mm", "2.5"])
    assert args.nsd_tolerance_mm == 2.5
    code = main(["evaluate-folder", str(preds), str(tiny_data["raw"]), "--out", str(out),
                 "--nsd-tolerance-mm", "-1"])
    assert code == 2 and "NSD tolerance" in capsys.readouterr().err


def test_unknown_command_is_usage_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "kdseg", "bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_summarize_and_report_name_what_is_missing(tmp_path: Path, capsys) -> None:
    run = tmp_path / "runs/student/t1/baseline/fold0/seed0"
    run.mkdir(parents=True)
    (run / "run_config.yaml").write_text(
        "stage: student\nsubset: t1\nmethod: {name: baseline, kind: baseline}\nfold: 0\nseed: 0\n")
    code = main(["summarize", "--runs", str(run), "--out-dir", str(tmp_path / "summary")])
    assert code == 2
    assert f"{run / 'metrics_per_case.csv'}: missing" in capsys.readouterr().err
    code = main(["report", "--summary-dir", str(tmp_path / "nothing"), "--runs", str(run),
                 "--preprocessed", str(tmp_path),
                 "--config-json", '{"dataset": {"labels": "brats", "modalities": ["t1"]}}',
                 "--out-dir", str(tmp_path / "report")])
    assert code == 2
    assert "run `kdseg summarize` first" in capsys.readouterr().err
