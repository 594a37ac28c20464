"""End-to-end tests for kdseg.evaluation.evaluate_folder on tiny NIfTI files written in tmp_path."""

from __future__ import annotations

import math
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from kdseg.data.labels import BRATS_LEGACY
from kdseg.evaluation.evaluate import COLUMNS, evaluate_folder
from kdseg.evaluation.metrics import METRICS

SHAPE = (8, 8, 6)
SPACING = (1.0, 1.0, 2.5)
AFFINE = np.diag([*SPACING, 1.0])
# 8 x 8 x 6 voxels at (1, 1, 2.5) mm: sqrt(8^2 + 8^2 + 15^2) = sqrt(353)
DIAGONAL = math.sqrt(353)


def write_nifti(
    path: Path, data: np.ndarray, affine: np.ndarray = AFFINE, dtype: type = np.int16
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(dtype), affine), path)
    return path


def tumour() -> np.ndarray:
    """Label map (8, 8, 6): edema block with a necrotic core holding enhancing tumour."""
    labels = np.zeros(SHAPE, dtype=np.int16)
    labels[1:7, 1:7, 1:5] = 2
    labels[2:6, 2:6, 2:4] = 1
    labels[3:5, 3:5, 2:4] = 4
    return labels


def edema_block(z0: int) -> np.ndarray:
    """Only edema: a 4 x 4 x 3 block starting at z = z0 (TC and ET empty)."""
    labels = np.zeros(SHAPE, dtype=np.int16)
    labels[2:6, 2:6, z0 : z0 + 3] = 2
    return labels


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """Three cases; references in BraTS layout (a, b) and plain layout (c) in the same folder.

    a: prediction identical to the reference.
    b: edema only, prediction shifted 1 voxel (2.5 mm) along z.
    c: enhancing tumour predicted as necrosis, so ET is missing from the prediction.
    """
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    write_nifti(pred_dir / "a.nii.gz", tumour())
    write_nifti(ref_dir / "a" / "a_seg.nii.gz", tumour())
    write_nifti(pred_dir / "b.nii.gz", edema_block(2))
    write_nifti(ref_dir / "b" / "b_seg.nii.gz", edema_block(1))
    pred_c = tumour()
    pred_c[pred_c == 4] = 1
    write_nifti(pred_dir / "c.nii.gz", pred_c)
    write_nifti(ref_dir / "c.nii.gz", tumour())
    return pred_dir, ref_dir


def values(df: pd.DataFrame) -> dict[tuple[str, str, str], float]:
    return {(r.case, r.region, r.metric): r.value for r in df.itertuples()}


def test_end_to_end(dirs: tuple[Path, Path], tmp_path: Path):
    pred_dir, ref_dir = dirs
    out_csv = tmp_path / "out" / "metrics.csv"
    df = evaluate_folder(pred_dir, ref_dir, BRATS_LEGACY, out_csv=out_csv, progress=False)

    assert list(df.columns) == list(COLUMNS)
    assert list(COLUMNS) == ["case", "region", "metric", "value", "empty_state", "empty_rule",
                             "nsd_tolerance_mm"]
    assert len(df) == 3 * 3 * len(METRICS)
    assert list(df["case"].unique()) == ["a", "b", "c"]
    assert list(df["region"].unique()) == ["WT", "TC", "ET"]
    assert list(df["metric"].unique()) == list(METRICS)
    assert set(df["empty_rule"]) == {"brats"}
    assert set(df["nsd_tolerance_mm"]) == {1.0}
    v = values(df)
    for region in ("WT", "TC", "ET"):
        assert v[("a", region, "dice")] == 1.0
        assert v[("a", region, "hd95")] == 0.0
        for metric in ("nsd", "sensitivity", "specificity"):
            assert v[("a", region, metric)] == 1.0
    # b: 4x4x3 blocks overlapping in 2 of 3 slices -> 2 * 32 / 96; pure shift of 1 voxel along
    # z (far face 16 of 44 surface voxels) -> HD95 = 2.5 mm, the z spacing from the header.
    assert v[("b", "WT", "dice")] == pytest.approx(2 / 3)
    assert v[("b", "WT", "hd95")] == pytest.approx(2.5)
    # b, NSD at 1 mm: of pred's 44 surface voxels, the 12-voxel rings of its slices z = 2, 3 lie
    # on ref's surface (0 mm), the 4 inner voxels of its bottom face are 1 mm (in-plane) from
    # ref's ring, its 16-voxel top face is 2.5 mm from ref's top face; ref -> pred mirrors it.
    # (24 + 4) * 2 / (44 * 2) = 7/11.
    assert v[("b", "WT", "nsd")] == pytest.approx(7 / 11)
    # TP 32 of 48 reference voxels; 384 - 48 = 336 background voxels, 16 of them predicted.
    assert v[("b", "WT", "sensitivity")] == pytest.approx(2 / 3)
    assert v[("b", "WT", "specificity")] == pytest.approx(320 / 336)
    assert (v[("b", "TC", "dice")], v[("b", "TC", "hd95")]) == (1.0, 0.0)  # both empty
    assert v[("c", "TC", "dice")] == 1.0
    assert v[("c", "ET", "dice")] == 0.0
    assert v[("c", "ET", "hd95")] == pytest.approx(DIAGONAL)
    assert (v[("c", "ET", "nsd")], v[("c", "ET", "sensitivity")]) == (0.0, 0.0)
    assert (v[("b", "ET", "nsd")], v[("b", "ET", "sensitivity")]) == (1.0, 1.0)  # both empty
    states = {(r.case, r.region): r.empty_state for r in df.itertuples()}
    assert states[("b", "ET")] == "both_empty"
    assert states[("c", "ET")] == "pred_empty"
    assert states[("a", "ET")] == "none"

    written = pd.read_csv(out_csv)
    pd.testing.assert_frame_equal(written, df, check_dtype=False)
    assert sorted(p.name for p in out_csv.parent.iterdir()) == ["metrics.csv"]  # no temp file


def test_nan_rule_round_trips_through_csv(dirs: tuple[Path, Path], tmp_path: Path):
    pred_dir, ref_dir = dirs
    out_csv = tmp_path / "metrics.csv"
    df = evaluate_folder(
        pred_dir, ref_dir, BRATS_LEGACY, empty_rule="nan", out_csv=out_csv, progress=False
    )
    empty_rows = df[df["empty_state"] != "none"]
    assert len(empty_rows) == (2 + 1) * len(METRICS)  # b: TC, ET both empty; c: ET pred empty
    # Raw definitions: both empty -> NaN except specificity (1, nothing predicted); prediction
    # empty -> HD95 NaN, while Dice, NSD and sensitivity of the missed region are a defined 0.
    nan_metrics = {
        "both_empty": {"dice", "hd95", "nsd", "sensitivity"},
        "pred_empty": {"hd95"},
    }
    for row in empty_rows.itertuples():
        if row.metric in nan_metrics[row.empty_state]:
            assert math.isnan(row.value), row
        else:
            assert row.value == (1.0 if row.metric == "specificity" else 0.0), row
    assert df.loc[df["empty_state"] == "none", "value"].notna().all()
    assert pd.read_csv(out_csv)["value"].isna().sum() == 2 * 4 + 1


def test_nsd_tolerance_reaches_rows(dirs: tuple[Path, Path], tmp_path: Path):
    """Case b is shifted by one 2.5 mm voxel along z: every surface voxel is within 2.5 mm."""
    pred_dir, ref_dir = dirs
    out_csv = tmp_path / "metrics.csv"
    df = evaluate_folder(
        pred_dir, ref_dir, BRATS_LEGACY, out_csv=out_csv, progress=False, nsd_tolerance_mm=2.5
    )
    assert set(df["nsd_tolerance_mm"]) == {2.5}
    assert values(df)[("b", "WT", "nsd")] == 1.0
    assert set(pd.read_csv(out_csv)["nsd_tolerance_mm"]) == {2.5}


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_bad_nsd_tolerance_fails_before_work(dirs: tuple[Path, Path], tmp_path: Path, bad):
    pred_dir, ref_dir = dirs
    out_csv = tmp_path / "metrics.csv"
    with pytest.raises(ValueError, match="NSD tolerance"):
        evaluate_folder(pred_dir, ref_dir, BRATS_LEGACY, out_csv=out_csv, progress=False,
                        nsd_tolerance_mm=bad)
    assert not out_csv.exists()


def test_case_subset_in_given_order(dirs: tuple[Path, Path]):
    pred_dir, ref_dir = dirs
    df = evaluate_folder(pred_dir, ref_dir, BRATS_LEGACY, cases=["c", "a"], progress=False)
    assert list(df["case"].unique()) == ["c", "a"]


def test_float_stored_whole_labels_accepted(tmp_path: Path):
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    write_nifti(pred_dir / "a.nii.gz", tumour(), dtype=np.float32)
    write_nifti(ref_dir / "a.nii.gz", tumour(), dtype=np.float64)
    df = evaluate_folder(pred_dir, ref_dir, BRATS_LEGACY, progress=False)
    assert (df.loc[df["metric"] == "dice", "value"] == 1.0).all()


def test_progress_bar_on_stderr(dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]):
    pred_dir, ref_dir = dirs
    evaluate_folder(pred_dir, ref_dir, BRATS_LEGACY, progress=True)
    captured = capsys.readouterr()
    assert "3/3" in captured.err
    assert captured.out == ""


# --- bad input ----------------------------------------------------------------------------------


def test_missing_prediction(dirs: tuple[Path, Path]):
    pred_dir, ref_dir = dirs
    expected = re.escape(str(pred_dir / "zz.nii.gz"))
    with pytest.raises(ValueError, match=expected):
        evaluate_folder(pred_dir, ref_dir, BRATS_LEGACY, cases=["a", "zz"], progress=False)


def test_missing_reference(dirs: tuple[Path, Path]):
    pred_dir, ref_dir = dirs
    write_nifti(pred_dir / "d.nii.gz", tumour())
    with pytest.raises(ValueError, match=re.escape(str(ref_dir / "d" / "d_seg.nii.gz"))):
        evaluate_folder(pred_dir, ref_dir, BRATS_LEGACY, progress=False)


def test_ambiguous_reference(dirs: tuple[Path, Path]):
    pred_dir, ref_dir = dirs
    write_nifti(ref_dir / "a.nii.gz", tumour())  # a also has ref_dir/a/a_seg.nii.gz
    with pytest.raises(ValueError, match="ambiguous"):
        evaluate_folder(pred_dir, ref_dir, BRATS_LEGACY, progress=False)


def test_shape_mismatch(dirs: tuple[Path, Path]):
    pred_dir, ref_dir = dirs
    bad = write_nifti(pred_dir / "a.nii.gz", np.zeros((8, 8, 5)))
    with pytest.raises(ValueError, match=rf"shape mismatch: prediction {re.escape(str(bad))}"):
        evaluate_folder(pred_dir, ref_dir, BRATS_LEGACY, progress=False)


def test_affine_mismatch(dirs: tuple[Path, Path]):
    pred_dir, ref_dir = dirs
    shifted = AFFINE.copy()
    shifted[0, 3] = 0.5  # half a voxel off along x
    bad = write_nifti(pred_dir / "b.nii.gz", edema_block(2), affine=shifted)
    expected = rf"affine mismatch between prediction {re.escape(str(bad))}"
    with pytest.raises(ValueError, match=expected):
        evaluate_folder(pred_dir, ref_dir, BRATS_LEGACY, progress=False)


def test_affine_within_tolerance_accepted(dirs: tuple[Path, Path]):
    pred_dir, ref_dir = dirs
    nudged = AFFINE.copy()
    nudged[0, 3] = 5e-4
    write_nifti(pred_dir / "a.nii.gz", tumour(), affine=nudged)
    evaluate_folder(pred_dir, ref_dir, BRATS_LEGACY, cases=["a"], progress=False)


def test_label_outside_convention(dirs: tuple[Path, Path]):
    pred_dir, ref_dir = dirs
    labels = tumour()
    labels[0, 0, 0] = 3  # 3 is ET only in the BraTS 2023 convention
    bad = write_nifti(pred_dir / "a.nii.gz", labels)
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad))}: unexpected label values \[3\]"):
        evaluate_folder(pred_dir, ref_dir, BRATS_LEGACY, progress=False)


def test_fractional_labels(dirs: tuple[Path, Path]):
    pred_dir, ref_dir = dirs
    labels = tumour().astype(np.float32)
    labels[0, 0, 0] = 1.5
    bad = write_nifti(ref_dir / "c.nii.gz", labels, dtype=np.float32)
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad))}: label map holds non-integer"):
        evaluate_folder(pred_dir, ref_dir, BRATS_LEGACY, progress=False)


def test_empty_prediction_folder(tmp_path: Path):
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    with pytest.raises(ValueError, match=rf"{re.escape(str(pred_dir))}: .*no \*\.nii\.gz files"):
        evaluate_folder(pred_dir, tmp_path, BRATS_LEGACY, progress=False)


def test_missing_prediction_folder(tmp_path: Path):
    with pytest.raises(ValueError, match="does not exist"):
        evaluate_folder(tmp_path / "nope", tmp_path, BRATS_LEGACY, progress=False)


def test_duplicate_cases(dirs: tuple[Path, Path]):
    pred_dir, ref_dir = dirs
    with pytest.raises(ValueError, match=r"more than once: \['a'\]"):
        evaluate_folder(pred_dir, ref_dir, BRATS_LEGACY, cases=["a", "b", "a"], progress=False)


def test_unknown_empty_rule_fails_before_work(dirs: tuple[Path, Path], tmp_path: Path):
    pred_dir, ref_dir = dirs
    out_csv = tmp_path / "metrics.csv"
    with pytest.raises(ValueError, match="unknown empty_rule"):
        evaluate_folder(pred_dir, ref_dir, BRATS_LEGACY, "zero", out_csv=out_csv, progress=False)
    assert not out_csv.exists()


def test_hidden_temp_files_of_an_interrupted_writer_are_not_cases(tmp_path: Path) -> None:
    from kdseg.evaluation.evaluate import discover_cases

    (tmp_path / "A.nii.gz").write_bytes(b"")
    (tmp_path / ".B.partial-0123456789ab.nii.gz").write_bytes(b"")
    assert discover_cases(tmp_path) == ["A"]


def test_reference_mapping_and_singleton_fourth_axis(tmp_path: Path) -> None:
    """References given per case (what preprocessing recorded, any layout), one of them stored
    as (X, Y, Z, 1) as some tools write label maps: evaluated like a 3-D file."""
    pred_dir = tmp_path / "pred"
    write_nifti(pred_dir / "a.nii.gz", tumour())
    write_nifti(pred_dir / "b.nii.gz", tumour())
    ref_a = write_nifti(tmp_path / "anywhere" / "x.nii.gz", tumour())
    ref_b = write_nifti(tmp_path / "elsewhere" / "y.nii.gz", tumour()[..., None])
    df = evaluate_folder(pred_dir, {"a": ref_a, "b": ref_b}, BRATS_LEGACY, progress=False)
    dice = df[df["metric"] == "dice"]["value"]
    assert len(dice) == 6 and (dice == 1.0).all()
    with pytest.raises(ValueError, match="no reference file given for case 'b'"):
        evaluate_folder(pred_dir, {"a": ref_a}, BRATS_LEGACY, progress=False)
