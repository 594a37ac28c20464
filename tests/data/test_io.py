"""Tests for kdseg.data.io: finding BraTS-layout cases, reading them and rejecting bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from kdseg.data.adapters import DatasetSource, find_dataset
from kdseg.data.io import (
    CaseFiles,
    DataError,
    load_case,
    read_case,
)
from kdseg.data.labels import BRATS_2023, BRATS_LEGACY

MODS = ("t1", "t1ce", "t2", "flair")
SHAPE = (6, 5, 4)
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def save(path: Path, data: np.ndarray, affine: np.ndarray = LPS) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def image_data(channel: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """Distinct values per channel (100 * (channel + 1) + voxel index) to check channel order."""
    return (np.arange(np.prod(shape)).reshape(shape) + 100.0 * (channel + 1)).astype(np.float32)


def label_data(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    label = np.zeros(shape, dtype=np.uint8)
    label[1, 1, 1], label[2, 2, 2], label[3, 3, 3] = 1, 2, 4
    return label


def write_case(
    root: Path,
    case_id: str,
    modalities: tuple[str, ...] = MODS,
    label: bool = True,
    affine: np.ndarray = LPS,
) -> Path:
    folder = root / case_id
    folder.mkdir(parents=True)
    for c, mod in enumerate(modalities):
        save(folder / f"{case_id}_{mod}.nii.gz", image_data(c), affine)
    if label:
        save(folder / f"{case_id}_seg.nii.gz", label_data(), affine)
    return folder


def files_of(root: Path, case_id: str) -> CaseFiles:
    (case,) = [c for c in find_cases(root, MODS) if c.case_id == case_id]
    return case


# ------------------------------------------------------------------------------- find_cases


def find_cases(root: Path, modalities: list[str] | tuple[str, ...],
               require_label: bool = True) -> list[CaseFiles]:
    """The BraTS adapter's cases; its problems raised as one DataError (what preprocessing
    reports)."""
    source = DatasetSource("brats", Path(root), tuple(modalities), require_label=require_label)
    cases, problems = find_dataset(source)
    if problems:
        raise DataError.from_problems(problems, Path(root))
    return cases


def test_find_cases_sorted_and_ignores_non_case_folders(tmp_path: Path) -> None:
    write_case(tmp_path, "case_b")
    write_case(tmp_path, "case_a")
    (tmp_path / "docs").mkdir()  # no expected file: not a case
    (tmp_path / "docs" / "readme.txt").write_text("x")
    hidden = tmp_path / ".cache" / ".cache_t1.nii.gz"
    hidden.parent.mkdir()
    hidden.write_bytes(b"")
    (tmp_path / "names.csv").write_text("x")

    cases = find_cases(tmp_path, MODS)

    assert [c.case_id for c in cases] == ["case_a", "case_b"]
    assert cases[0].images == {m: tmp_path / "case_a" / f"case_a_{m}.nii.gz" for m in MODS}
    assert cases[0].label == tmp_path / "case_a" / "case_a_seg.nii.gz"


def test_find_cases_subset_of_modalities_and_uncompressed_fallback(tmp_path: Path) -> None:
    folder = tmp_path / "c1"
    folder.mkdir()
    save(folder / "c1_flair.nii", image_data(0))
    save(folder / "c1_seg.nii.gz", label_data())

    (case,) = find_cases(tmp_path, ["flair"])

    assert case.images == {"flair": folder / "c1_flair.nii"}


def test_find_cases_unlabelled_allowed_when_not_required(tmp_path: Path) -> None:
    write_case(tmp_path, "c1", label=False)
    (case,) = find_cases(tmp_path, MODS, require_label=False)
    assert case.label is None


def test_missing_modality_names_expected_path(tmp_path: Path) -> None:
    folder = write_case(tmp_path, "c1")
    (folder / "c1_t1ce.nii.gz").unlink()

    with pytest.raises(DataError) as err:
        find_cases(tmp_path, MODS)

    expected = folder / "c1_t1ce.nii.gz"
    assert str(err.value).startswith(f"{expected}: missing 't1ce' image file")


def test_missing_label_when_required(tmp_path: Path) -> None:
    write_case(tmp_path, "c1", label=False)
    with pytest.raises(DataError, match="missing label file") as err:
        find_cases(tmp_path, MODS)
    assert str(err.value).startswith(str(tmp_path / "c1" / "c1_seg.nii.gz"))


def test_incomplete_cases_reported_together(tmp_path: Path) -> None:
    (write_case(tmp_path, "c1") / "c1_t2.nii.gz").unlink()
    (write_case(tmp_path, "c2") / "c2_flair.nii.gz").unlink()
    write_case(tmp_path, "c3")

    with pytest.raises(DataError) as err:
        find_cases(tmp_path, MODS)

    message = str(err.value)
    assert message.startswith(f"{tmp_path}: 2 data problems in 2 case(s)")
    assert "c1/c1_t2.nii.gz" in message and "c2/c2_flair.nii.gz" in message
    assert {p.case_id for p in err.value.problems} == {"c1", "c2"}


def test_empty_dataset_folder(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    with pytest.raises(DataError) as err:
        find_cases(tmp_path, MODS)
    message = str(err.value)
    assert message.startswith(f"{tmp_path}: empty dataset folder")
    assert "<case>/<case>_<modality>.nii.gz" in message


def test_missing_root(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DataError, match="does not exist") as err:
        find_cases(root, MODS)
    assert str(err.value).startswith(str(root))


def test_root_is_a_file(tmp_path: Path) -> None:
    root = tmp_path / "file.txt"
    root.write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        find_cases(root, MODS)


@pytest.mark.parametrize("mods", [[], ["t1", "t1"], ["t1", "seg"]])
def test_bad_modality_lists(tmp_path: Path, mods: list[str]) -> None:
    write_case(tmp_path, "c1")
    with pytest.raises(ValueError, match="modalities"):
        find_cases(tmp_path, mods)


# ------------------------------------------------------------------------------- load_case


def test_load_case_arrays_dtypes_and_channel_order(tmp_path: Path) -> None:
    write_case(tmp_path, "c1")
    order = ("flair", "t1")

    case = load_case(files_of(tmp_path, "c1"), order, BRATS_LEGACY)

    assert case.image.shape == (2, *SHAPE) and case.image.dtype == np.float32
    np.testing.assert_array_equal(case.image[0], image_data(3))  # flair was written 4th
    np.testing.assert_array_equal(case.image[1], image_data(0))
    assert case.label is not None and case.label.dtype == np.uint8
    np.testing.assert_array_equal(case.label, label_data())
    np.testing.assert_array_equal(case.affine, LPS)
    assert case.modalities == order


def test_float_label_file_with_integer_values_is_accepted(tmp_path: Path) -> None:
    folder = write_case(tmp_path, "c1")
    save(folder / "c1_seg.nii.gz", label_data().astype(np.float64))
    case = load_case(files_of(tmp_path, "c1"), MODS, BRATS_LEGACY)
    assert case.label is not None and case.label.dtype == np.uint8


def test_affine_within_tolerance_is_accepted(tmp_path: Path) -> None:
    folder = write_case(tmp_path, "c1")
    nudged = LPS.copy()
    nudged[0, 3] += 5e-4
    save(folder / "c1_t2.nii.gz", image_data(2), nudged)
    load_case(files_of(tmp_path, "c1"), MODS, BRATS_LEGACY)


def _load_error(tmp_path: Path, modalities=MODS, convention=BRATS_LEGACY) -> str:
    with pytest.raises(DataError) as err:
        load_case(files_of(tmp_path, "c1"), modalities, convention)
    return str(err.value)


def test_different_shapes(tmp_path: Path) -> None:
    folder = write_case(tmp_path, "c1")
    bad = save(folder / "c1_t2.nii.gz", image_data(2, (6, 5, 5)))
    message = _load_error(tmp_path)
    assert message.startswith(f"{bad}: shape (6, 5, 5) differs from c1_t1.nii.gz shape (6, 5, 4)")


def test_different_affines(tmp_path: Path) -> None:
    folder = write_case(tmp_path, "c1")
    shifted = LPS.copy()
    shifted[1, 3] = 2.5
    bad = save(folder / "c1_flair.nii.gz", image_data(3), shifted)
    message = _load_error(tmp_path)
    assert message.startswith(f"{bad}: affine differs from c1_t1.nii.gz affine by up to 2.5 mm")


def test_label_geometry_is_checked_too(tmp_path: Path) -> None:
    folder = write_case(tmp_path, "c1")
    bad = save(folder / "c1_seg.nii.gz", label_data(), np.diag([1.0, 1.0, 1.0, 1.0]))
    assert _load_error(tmp_path).startswith(f"{bad}: affine differs")


@pytest.mark.parametrize(
    ("value", "counts"), [(np.nan, "2 NaN and 0 Inf"), (np.inf, "0 NaN and 2 Inf")]
)
def test_non_finite_voxels(tmp_path: Path, value: float, counts: str) -> None:
    folder = write_case(tmp_path, "c1")
    data = image_data(1)
    data[0, 0, 0] = data[1, 0, 0] = value
    bad = save(folder / "c1_t1ce.nii.gz", data)
    assert _load_error(tmp_path).startswith(f"{bad}: {counts} voxels")


def test_label_value_outside_convention(tmp_path: Path) -> None:
    folder = write_case(tmp_path, "c1")
    label = label_data()
    label[0, 0, 0] = 3
    bad = save(folder / "c1_seg.nii.gz", label)
    message = _load_error(tmp_path)
    assert message.startswith(f"{bad}: unexpected label values [3]")
    assert "'brats' convention" in message
    # The same file is fine for a convention that has 3 ... but not 4.
    assert "unexpected label values [4]" in _load_error(tmp_path, convention=BRATS_2023)


def test_fractional_labels(tmp_path: Path) -> None:
    folder = write_case(tmp_path, "c1")
    label = label_data().astype(np.float32)
    label[0, 0, 0] = 0.5
    bad = save(folder / "c1_seg.nii.gz", label)
    message = _load_error(tmp_path)
    assert message.startswith(f"{bad}: label file has non-integer (fractional) values in 1 voxels")


def test_four_d_image(tmp_path: Path) -> None:
    folder = write_case(tmp_path, "c1")
    bad = save(folder / "c1_t1.nii.gz", np.ones((*SHAPE, 2), dtype=np.float32))
    assert _load_error(tmp_path).startswith(f"{bad}: expected a 3-D image, got 4-D data")


def test_corrupt_gzip(tmp_path: Path) -> None:
    folder = write_case(tmp_path, "c1")
    bad = folder / "c1_t2.nii.gz"
    bad.write_bytes(b"this is not a gzip stream" * 10)
    assert _load_error(tmp_path).startswith(f"{bad}: cannot read NIfTI file")


def test_truncated_gzip(tmp_path: Path) -> None:
    folder = write_case(tmp_path, "c1")
    bad = folder / "c1_seg.nii.gz"
    raw = gzip.decompress(bad.read_bytes())
    bad.write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) - 40])  # header intact, data cut
    assert _load_error(tmp_path).startswith(f"{bad}: cannot read NIfTI")


def test_all_zero_case(tmp_path: Path) -> None:
    folder = write_case(tmp_path, "c1")
    for mod in MODS:
        save(folder / f"c1_{mod}.nii.gz", np.zeros(SHAPE, dtype=np.float32))
    message = _load_error(tmp_path)  # one problem per empty modality file, each named
    assert message.startswith(f"{folder}: {len(MODS)} data problems in 1 case(s)")
    for mod in MODS:
        assert f"c1_{mod}.nii.gz  " in message
    assert message.count("every voxel is zero (an empty image)") == len(MODS)


def test_read_case_collects_every_problem_of_a_case(tmp_path: Path) -> None:
    folder = write_case(tmp_path, "c1")
    save(folder / "c1_t2.nii.gz", image_data(2, (6, 5, 5)))
    (folder / "c1_flair.nii.gz").write_bytes(b"garbage")
    label = label_data()
    label[0, 0, 0] = 7
    save(folder / "c1_seg.nii.gz", label)

    case, problems = read_case(files_of(tmp_path, "c1"), MODS, BRATS_LEGACY)

    assert case is None
    assert [p.path.name for p in problems] == ["c1_t2.nii.gz", "c1_flair.nii.gz", "c1_seg.nii.gz"]
    with pytest.raises(DataError) as err:
        load_case(files_of(tmp_path, "c1"), MODS, BRATS_LEGACY)
    assert str(err.value).startswith(f"{folder}: 3 data problems in 1 case(s)")


def test_data_error_is_value_error() -> None:
    assert issubclass(DataError, ValueError)
