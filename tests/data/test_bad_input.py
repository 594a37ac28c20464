"""The bad-input catalogue: every kind of broken dataset gives a clear error naming the file.

Each test runs the whole preprocessing pass (:func:`preprocess_source`) on a tiny hand-made
dataset with one thing wrong and checks that

* the error starts with (or its table lists) the offending path and says what is wrong,
* no ``manifest.csv`` is written, and
* the dataset's own files are never modified (content hash and mtime of every file before and
  after, and no file added or removed).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from kdseg.data.adapters import DatasetSource
from kdseg.data.io import AFFINE_ATOL_MM, DataError
from kdseg.data.labels import BRATS_LEGACY, MSD_BRATS, LabelConvention
from kdseg.data.preprocess import case_paths, preprocess_source

MODS = ("t1", "t1ce", "t2", "flair")
SHAPE = (8, 7, 6)
AFFINE = np.array([[-1.0, 0, 0, 10], [0, -1.2, 0, 20], [0, 0, 2.0, -5], [0, 0, 0, 1]])
TASK01 = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}


# ------------------------------------------------------------------------------ writing data


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def image_data(channel: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """Nonzero everywhere (the whole grid is brain), distinct per channel."""
    return (np.arange(np.prod(shape)).reshape(shape) % 50 + 1.0 + 100 * channel).astype(
        np.float32
    )


def label_data(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    label = np.zeros(shape, dtype=np.uint8)
    label[2:5, 2:5, 2:4] = 2
    label[3, 3, 2], label[3, 3, 3] = 1, 4
    return label


def write_brats_case(folder: Path, mods: tuple[str, ...] = MODS) -> Path:
    case = folder.name
    for channel, mod in enumerate(mods):
        save(folder / f"{case}_{mod}.nii.gz", image_data(channel))
    save(folder / f"{case}_seg.nii.gz", label_data())
    return folder


def brats(root: Path, *case_ids: str) -> DatasetSource:
    for case in case_ids:
        write_brats_case(root / case)
    return DatasetSource("brats", root, MODS)


def write_manifest(root: Path, rows: list[list[str]], header: tuple[str, ...] = (
        "case", *MODS, "label"), name: str = "manifest.csv") -> Path:
    table = root / name
    root.mkdir(parents=True, exist_ok=True)
    table.write_text("\n".join(",".join(row) for row in [list(header), *rows]) + "\n")
    return table


def manifest_case(root: Path, case: str, mods: tuple[str, ...] = MODS) -> list[str]:
    """Files of one manifest case under ``root/files``; returns its row (relative paths)."""
    cells = []
    for channel, mod in enumerate(MODS):
        if mod in mods:
            save(root / "files" / f"{case}_{mod}.nii.gz", image_data(channel))
            cells.append(f"files/{case}_{mod}.nii.gz")
        else:
            cells.append("")
    save(root / "files" / f"{case}_seg.nii.gz", label_data())
    return [case, *cells, f"files/{case}_seg.nii.gz"]


def manifest(root: Path, *case_ids: str) -> DatasetSource:
    table = write_manifest(root, [manifest_case(root, case) for case in case_ids])
    return DatasetSource("manifest", root, MODS, manifest=table)


def msd(root: Path, *case_ids: str, entries: list[dict] | None = None) -> DatasetSource:
    for case in case_ids:
        stack = np.stack([image_data(v) for v in range(4)], axis=-1)
        save(root / "imagesTr" / f"{case}.nii.gz", stack)
        label = label_data()
        label[label == 4] = 3
        save(root / "labelsTr" / f"{case}.nii.gz", label)
    if entries is None:
        entries = [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                   for c in case_ids]
    (root / "dataset.json").write_text(json.dumps({"modality": TASK01, "training": entries}))
    return DatasetSource("msd", root, MODS)


# ----------------------------------------------------------------------- the common checks


def tree_state(*roots: Path) -> dict[Path, tuple[str, int]]:
    """Every file under (or at) ``roots`` -> (sha256 of its content, mtime in ns)."""
    files = [p for root in roots for p in ([root] if root.is_file() else root.rglob("*"))
             if p.is_file()]
    return {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(files)}


@pytest.fixture
def untouched() -> Iterator[Callable[..., None]]:
    """``untouched(path, ...)`` records files now; the test fails if they change by its end."""
    watched: list[tuple[tuple[Path, ...], dict[Path, tuple[str, int]]]] = []

    def watch(*roots: Path) -> None:
        watched.append((roots, tree_state(*roots)))

    yield watch
    assert watched, "nothing was watched"
    for roots, before in watched:
        assert tree_state(*roots) == before, f"source files under {roots} were modified"


def fail(source: DatasetSource, out: Path, untouched: Callable[..., None],
         convention: LabelConvention = BRATS_LEGACY, also: tuple[Path, ...] = ()) -> DataError:
    """Run preprocessing, expect a DataError; no manifest.csv, the sources left as they were."""
    untouched(Path(source.root), *also)
    with pytest.raises(DataError) as err:
        preprocess_source(source, out, convention, progress=False)
    assert not (out / "manifest.csv").exists()
    return err.value


def assert_one(err: DataError, path: Path, *texts: str) -> None:
    """The error is about ``path`` alone: message ``<path>: <problem>`` holding every text."""
    message = str(err)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message, message
    for text in texts:
        assert text in message, (text, message)
    assert [p.path for p in err.problems] == ([path] if err.problems else [])


# ------------------------------------------------------------------------ missing files


def test_missing_modality_file_brats(tmp_path: Path, untouched) -> None:
    source = brats(tmp_path / "raw", "c1", "c2")
    (tmp_path / "raw" / "c2" / "c2_t1ce.nii.gz").unlink()
    err = fail(source, tmp_path / "out", untouched)
    assert_one(err, tmp_path / "raw" / "c2" / "c2_t1ce.nii.gz", "missing 't1ce' image file")


def test_missing_modality_file_manifest(tmp_path: Path, untouched) -> None:
    raw = tmp_path / "raw"
    source = manifest(raw, "c1", "c2")
    (raw / "files" / "c1_t2.nii.gz").unlink()
    err = fail(source, tmp_path / "out", untouched)
    assert_one(err, raw / "files" / "c1_t2.nii.gz", "missing 't2' image file")


def test_missing_image_and_label_msd(tmp_path: Path, untouched) -> None:
    raw = tmp_path / "raw"
    source = msd(raw, "BRATS_001", "BRATS_002")
    (raw / "imagesTr" / "BRATS_001.nii.gz").unlink()
    (raw / "labelsTr" / "BRATS_002.nii.gz").unlink()
    err = fail(source, tmp_path / "out", untouched, MSD_BRATS)
    assert [(p.path, p.problem) for p in err.problems] == [
        (raw / "imagesTr" / "BRATS_001.nii.gz", "missing image file"),
        (raw / "labelsTr" / "BRATS_002.nii.gz", "missing label file"),
    ]
    assert "imagesTr/BRATS_001.nii.gz" in str(err) and "labelsTr/BRATS_002.nii.gz" in str(err)


def test_missing_label_file_brats(tmp_path: Path, untouched) -> None:
    source = brats(tmp_path / "raw", "c1")
    (tmp_path / "raw" / "c1" / "c1_seg.nii.gz").unlink()
    err = fail(source, tmp_path / "out", untouched)
    assert_one(err, tmp_path / "raw" / "c1" / "c1_seg.nii.gz", "missing label file")


# ------------------------------------------------------------------------ duplicate ids


def test_duplicate_case_ids_manifest_rows(tmp_path: Path, untouched) -> None:
    raw = tmp_path / "raw"
    rows = [manifest_case(raw, "c1"), manifest_case(raw, "c2"), manifest_case(raw, "c1")]
    table = write_manifest(raw, rows)
    err = fail(DatasetSource("manifest", raw, MODS, manifest=table), tmp_path / "out", untouched)
    assert_one(err, table, "line 4: duplicate case id (also line 2)")
    assert err.problems[0].case_id == "c1"


def test_duplicate_case_ids_msd_entries(tmp_path: Path, untouched) -> None:
    raw = tmp_path / "raw"
    entry = {"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}
    other = {"image": "imagesTr/BRATS_002.nii.gz", "label": "labelsTr/BRATS_002.nii.gz"}
    source = msd(raw, "BRATS_001", "BRATS_002", entries=[entry, other, entry])
    err = fail(source, tmp_path / "out", untouched, MSD_BRATS)
    assert_one(err, raw / "dataset.json", "training[2]: duplicate case id (also training[0])")


def test_duplicate_case_ids_brats_hgg_and_lgg(tmp_path: Path, untouched) -> None:
    raw = tmp_path / "raw"
    write_brats_case(raw / "HGG" / "Brats18_1")
    write_brats_case(raw / "HGG" / "Brats18_2")
    write_brats_case(raw / "LGG" / "Brats18_1")
    err = fail(DatasetSource("brats", raw, MODS), tmp_path / "out", untouched)
    assert_one(err, raw / "LGG" / "Brats18_1",
               f"duplicate case id (also {raw / 'HGG' / 'Brats18_1'})")


# --------------------------------------------------------------------- geometry problems


def test_shape_mismatch_between_modalities(tmp_path: Path, untouched) -> None:
    source = brats(tmp_path / "raw", "c1")
    bad = save(tmp_path / "raw" / "c1" / "c1_t2.nii.gz", image_data(2, (8, 7, 7)))
    err = fail(source, tmp_path / "out", untouched)
    assert_one(err, bad, "shape (8, 7, 7) differs from c1_t1.nii.gz shape (8, 7, 6)")


def test_affine_mismatch_between_modalities(tmp_path: Path, untouched) -> None:
    source = brats(tmp_path / "raw", "c1")
    shifted = AFFINE.copy()
    shifted[2, 3] += 0.25
    bad = save(tmp_path / "raw" / "c1" / "c1_flair.nii.gz", image_data(3), shifted)
    err = fail(source, tmp_path / "out", untouched)
    assert_one(err, bad, "affine differs from c1_t1.nii.gz affine by up to 0.25 mm",
               f"(tolerance {AFFINE_ATOL_MM} mm)")


def test_label_affine_mismatch_msd(tmp_path: Path, untouched) -> None:
    raw = tmp_path / "raw"
    source = msd(raw, "BRATS_001")
    label = raw / "labelsTr" / "BRATS_001.nii.gz"
    save(label, np.asarray(nib.load(label).dataobj), np.diag([1.0, 1.0, 1.0, 1.0]))
    err = fail(source, tmp_path / "out", untouched, MSD_BRATS)
    # Image and label share the name BRATS_001.nii.gz: the reference is named with its folder.
    assert_one(err, label, "affine differs from imagesTr/BRATS_001.nii.gz affine by up to")


def test_label_shape_mismatch_msd(tmp_path: Path, untouched) -> None:
    raw = tmp_path / "raw"
    source = msd(raw, "BRATS_001")
    label = save(raw / "labelsTr" / "BRATS_001.nii.gz", label_data((8, 7, 5)))
    err = fail(source, tmp_path / "out", untouched, MSD_BRATS)
    assert_one(err, label, "shape (8, 7, 5) differs from imagesTr/BRATS_001.nii.gz shape "
                           "(8, 7, 6)")


def test_affine_within_tolerance_is_accepted(tmp_path: Path, untouched) -> None:
    source = brats(tmp_path / "raw", "c1")
    nudged = AFFINE.copy()
    nudged[:3, 3] += AFFINE_ATOL_MM / 2
    save(tmp_path / "raw" / "c1" / "c1_t2.nii.gz", image_data(2), nudged)
    save(tmp_path / "raw" / "c1" / "c1_seg.nii.gz", label_data(), nudged)
    untouched(tmp_path / "raw")
    manifest_df = preprocess_source(source, tmp_path / "out", BRATS_LEGACY, progress=False)
    assert manifest_df["case"].tolist() == ["c1"]
    assert (tmp_path / "out" / "manifest.csv").is_file()


# -------------------------------------------------------------------- voxel problems


@pytest.mark.parametrize(
    ("value", "counts"), [(np.nan, "3 NaN and 0 Inf"), (np.inf, "0 NaN and 3 Inf"),
                          (-np.inf, "0 NaN and 3 Inf")])
def test_non_finite_voxels(tmp_path: Path, untouched, value: float, counts: str) -> None:
    source = brats(tmp_path / "raw", "c1")
    data = image_data(1)
    data[0, 0, :3] = value
    bad = save(tmp_path / "raw" / "c1" / "c1_t1ce.nii.gz", data)
    err = fail(source, tmp_path / "out", untouched)
    assert_one(err, bad, f"{counts} voxels (non-finite intensities)")


def test_non_finite_voxels_in_an_msd_volume(tmp_path: Path, untouched) -> None:
    raw = tmp_path / "raw"
    source = msd(raw, "BRATS_001")
    image = raw / "imagesTr" / "BRATS_001.nii.gz"
    stack = np.asarray(nib.load(image).dataobj).copy()
    stack[1, 1, 1, 2] = np.nan
    save(image, stack)
    err = fail(source, tmp_path / "out", untouched, MSD_BRATS)
    assert_one(err, image, "volume 2 (t1ce): 1 NaN and 0 Inf voxels")


def test_all_zero_image(tmp_path: Path, untouched) -> None:
    source = brats(tmp_path / "raw", "c1")
    bad = save(tmp_path / "raw" / "c1" / "c1_t2.nii.gz", np.zeros(SHAPE, np.float32))
    err = fail(source, tmp_path / "out", untouched)
    assert_one(err, bad, "every voxel is zero (an empty image)")


def test_all_zero_volume_of_an_msd_image_is_named(tmp_path: Path, untouched) -> None:
    raw = tmp_path / "raw"
    source = msd(raw, "BRATS_001")
    image = raw / "imagesTr" / "BRATS_001.nii.gz"
    stack = np.asarray(nib.load(image).dataobj).copy()
    stack[..., 3] = 0
    save(image, stack)
    err = fail(source, tmp_path / "out", untouched, MSD_BRATS)
    assert_one(err, image, "volume 3 (t2): every voxel is zero")


def test_unexpected_label_values_are_listed(tmp_path: Path, untouched) -> None:
    source = brats(tmp_path / "raw", "c1")
    label = label_data()
    label[0, 0, 0], label[0, 0, 1], label[7, 6, 5] = 3, 7, 3
    bad = save(tmp_path / "raw" / "c1" / "c1_seg.nii.gz", label)
    err = fail(source, tmp_path / "out", untouched)
    assert_one(err, bad, "unexpected label values [3, 7]", "'brats' convention allows only "
               "[0, 1, 2, 4]")


def test_negative_label_value(tmp_path: Path, untouched) -> None:
    source = brats(tmp_path / "raw", "c1")
    label = label_data().astype(np.int16)
    label[0, 0, 0] = -1
    bad = save(tmp_path / "raw" / "c1" / "c1_seg.nii.gz", label)
    assert_one(fail(source, tmp_path / "out", untouched), bad, "unexpected label values [-1]")


def test_fractional_float_label(tmp_path: Path, untouched) -> None:
    source = brats(tmp_path / "raw", "c1")
    label = label_data().astype(np.float32)
    label[0, 0, 0], label[1, 0, 0] = 0.5, 1.25
    bad = save(tmp_path / "raw" / "c1" / "c1_seg.nii.gz", label)
    err = fail(source, tmp_path / "out", untouched)
    assert_one(err, bad, "label file has non-integer (fractional) values in 2 voxels, e.g. 0.5")


def test_float_label_with_integer_values_is_accepted(tmp_path: Path, untouched) -> None:
    source = brats(tmp_path / "raw", "c1")
    save(tmp_path / "raw" / "c1" / "c1_seg.nii.gz", label_data().astype(np.float64))
    untouched(tmp_path / "raw")
    preprocess_source(source, tmp_path / "out", BRATS_LEGACY, progress=False)
    assert np.load(case_paths(tmp_path / "out", "c1")[1]).dtype == np.uint8


# ----------------------------------------------------------------- dimensionality, corrupt


def test_four_d_file_where_three_d_is_expected(tmp_path: Path, untouched) -> None:
    source = brats(tmp_path / "raw", "c1")
    bad = save(tmp_path / "raw" / "c1" / "c1_t1.nii.gz", np.ones((*SHAPE, 2), np.float32))
    err = fail(source, tmp_path / "out", untouched)
    assert_one(err, bad, "expected a 3-D image, got 4-D data of shape (8, 7, 6, 2)")


def test_four_d_label_in_msd(tmp_path: Path, untouched) -> None:
    raw = tmp_path / "raw"
    source = msd(raw, "BRATS_001")
    label = save(raw / "labelsTr" / "BRATS_001.nii.gz", np.zeros((*SHAPE, 2), np.uint8))
    err = fail(source, tmp_path / "out", untouched, MSD_BRATS)
    assert_one(err, label, "expected a 3-D image, got 4-D data")


def test_three_d_file_where_msd_expects_four_d(tmp_path: Path, untouched) -> None:
    raw = tmp_path / "raw"
    source = msd(raw, "BRATS_001", "BRATS_002")
    bad = save(raw / "imagesTr" / "BRATS_002.nii.gz", image_data())
    err = fail(source, tmp_path / "out", untouched, MSD_BRATS)
    assert_one(err, bad, "expected a 4-D image (X, Y, Z, modality) with 4 volumes, got 3-D data "
                         "of shape (8, 7, 6)")


def test_msd_image_with_too_few_volumes(tmp_path: Path, untouched) -> None:
    raw = tmp_path / "raw"
    source = msd(raw, "BRATS_001")
    bad = save(raw / "imagesTr" / "BRATS_001.nii.gz", np.ones((*SHAPE, 2), np.float32))
    err = fail(source, tmp_path / "out", untouched, MSD_BRATS)
    assert_one(err, bad, "4-D image has 2 volumes, the dataset description needs 4")


def _truncate(path: Path) -> None:
    whole = path.read_bytes()
    raw = gzip.decompress(whole)
    assert len(raw) > 352  # the NIfTI header survives the cut, the voxel data does not
    path.write_bytes(gzip.compress(raw)[: len(whole) // 2])


@pytest.mark.parametrize(
    "damage",
    [_truncate,
     lambda p: p.write_bytes(b"\x00garbage, not a gzip stream" * 20),
     lambda p: p.write_bytes(gzip.compress(b"gzip, but not NIfTI" * 40)),
     lambda p: p.write_bytes(b"")],
    ids=["truncated-gzip", "garbage", "gzipped-garbage", "empty-file"],
)
@pytest.mark.parametrize("which", ["c1_t2.nii.gz", "c1_seg.nii.gz"])
def test_unreadable_nifti(tmp_path: Path, untouched, damage: Callable[[Path], None],
                          which: str) -> None:
    source = brats(tmp_path / "raw", "c1")
    bad = tmp_path / "raw" / "c1" / which
    damage(bad)
    err = fail(source, tmp_path / "out", untouched)
    assert_one(err, bad, "cannot read NIfTI")


# ---------------------------------------------------------------------- ids, paths, tables


@pytest.mark.parametrize("case", ["../evil", "sub/c1", "..", "a\\b"])
def test_case_id_with_path_separator_or_dotdot(tmp_path: Path, untouched, case: str) -> None:
    raw, out = tmp_path / "raw", tmp_path / "work" / "out"
    row = manifest_case(raw, "c1")
    table = write_manifest(raw, [[case, *row[1:]]])
    err = fail(DatasetSource("manifest", raw, MODS, manifest=table), out, untouched)
    assert_one(err, table, f"line 2: case id {case!r} contains a path separator or '..'")
    # Nothing was written for it, in or next to the output folder.
    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(raw)]
    assert written == []


def test_case_id_with_odd_characters(tmp_path: Path, untouched) -> None:
    raw = tmp_path / "raw"
    row = manifest_case(raw, "c1")
    table = write_manifest(raw, [["c 1", *row[1:]], [".c1", *row[1:]]])
    err = fail(DatasetSource("manifest", raw, MODS, manifest=table), tmp_path / "out", untouched)
    assert sorted(p.problem for p in err.problems) == [
        "line 2: case id 'c 1' has characters other than letters, digits, '.', '_', '-' "
        "(or starts with '.')",
        "line 3: case id '.c1' has characters other than letters, digits, '.', '_', '-' "
        "(or starts with '.')",
    ]
    assert {p.path for p in err.problems} == {table}


@pytest.mark.parametrize("where", ["dotdot", "absolute"])
@pytest.mark.parametrize("column", ["t1ce", "label"])
def test_manifest_path_outside_the_dataset_root(tmp_path: Path, untouched, where: str,
                                                column: str) -> None:
    raw = tmp_path / "raw"
    outside = save(tmp_path / "elsewhere" / "x.nii.gz", image_data())  # exists, readable
    cell = "../elsewhere/x.nii.gz" if where == "dotdot" else str(outside)
    row = manifest_case(raw, "c1")
    row[(*MODS, "label").index(column) + 1] = cell
    table = write_manifest(raw, [row, manifest_case(raw, "c2")])
    source = DatasetSource("manifest", raw, MODS, manifest=table)
    err = fail(source, tmp_path / "out", untouched, also=(outside,))
    what = "t1ce path" if column == "t1ce" else "label path"
    assert_one(err, table, f"line 2: {what} {cell!r} points outside {raw}")


def test_msd_entry_outside_the_dataset_root(tmp_path: Path, untouched) -> None:
    raw = tmp_path / "raw"
    msd(raw, "BRATS_001")
    entries = [{"image": "../BRATS_009.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}]
    source = msd(raw, entries=entries)
    err = fail(source, tmp_path / "out", untouched, MSD_BRATS)
    assert_one(err, raw / "dataset.json", "training[0]: image '../BRATS_009.nii.gz' points "
                                          f"outside {raw}")


def test_missing_manifest_column(tmp_path: Path, untouched) -> None:
    raw = tmp_path / "raw"
    row = manifest_case(raw, "c1")
    table = write_manifest(raw, [row[:3] + row[4:]], header=("case", "t1", "t1ce", "flair",
                                                              "label"))
    err = fail(DatasetSource("manifest", raw, MODS, manifest=table), tmp_path / "out", untouched)
    assert_one(err, table, "manifest lacks column(s) ['t2']",
               "it has ['case', 't1', 't1ce', 'flair', 'label']")


def test_missing_manifest_file(tmp_path: Path, untouched) -> None:
    (tmp_path / "raw").mkdir()
    table = tmp_path / "raw" / "list.csv"
    err = fail(DatasetSource("manifest", tmp_path / "raw", MODS, manifest=table),
               tmp_path / "out", untouched)
    assert_one(err, table, "manifest file does not exist")


def test_missing_or_broken_msd_dataset_json(tmp_path: Path, untouched) -> None:
    (tmp_path / "empty").mkdir()
    err = fail(DatasetSource("msd", tmp_path / "empty", MODS), tmp_path / "out", untouched)
    assert_one(err, tmp_path / "empty" / "dataset.json",
               "missing (an MSD dataset folder holds dataset.json)")
    for name, text in (("bad_json", "{not json"), ("no_training", '{"modality": {}}')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "dataset.json").write_text(text)
        err = fail(DatasetSource("msd", tmp_path / name, MODS), tmp_path / "out", untouched)
        assert_one(err, tmp_path / name / "dataset.json", "not a valid MSD dataset.json")


@pytest.mark.parametrize("contents", ["nothing", "no-case"])
@pytest.mark.parametrize("kind", ["brats", "manifest"])
def test_empty_folder_and_folder_without_cases(tmp_path: Path, untouched, contents: str,
                                               kind: str) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    if contents == "no-case":
        (raw / "docs").mkdir()
        (raw / "docs" / "README.md").write_text("no cases here")
        (raw / "HGG").mkdir()  # an empty group folder
        (raw / "c1").mkdir()
        (raw / "c1" / "notes.txt").write_text("no NIfTI")
        save(raw / "c1" / "other_t1.nii.gz", image_data())  # not <case>_<modality>
    if kind == "brats":
        source = DatasetSource("brats", raw, MODS)
        text = "empty dataset folder: no cases found for modalities ['t1', 't1ce', 't2', 'flair']"
    else:
        table = write_manifest(raw, [])
        source = DatasetSource("manifest", raw, MODS, manifest=table)
        text = f"manifest {table} has no rows"
    err = fail(source, tmp_path / "out", untouched)
    assert_one(err, raw, text)


def test_dataset_folder_does_not_exist(tmp_path: Path, untouched) -> None:
    source = DatasetSource("brats", tmp_path / "nowhere", MODS)
    untouched(tmp_path)
    with pytest.raises(DataError) as err:
        preprocess_source(source, tmp_path / "out", BRATS_LEGACY, progress=False)
    assert_one(err.value, tmp_path / "nowhere", "dataset folder does not exist")


def test_unpaired_dataset_with_a_modality_without_cases(tmp_path: Path, untouched) -> None:
    raw = tmp_path / "raw"
    mods = ("t1", "t1ce", "t2", "flair")
    rows = [manifest_case(raw, "c1", ("t1ce",)), manifest_case(raw, "c2", ("t1ce", "t2")),
            manifest_case(raw, "c3", ("t1",))]
    table = write_manifest(raw, rows)
    source = DatasetSource("manifest", raw, mods, manifest=table, unpaired=True)
    err = fail(source, tmp_path / "out", untouched)
    assert_one(err, raw, "unpaired dataset has no case with modality ['flair']",
               "{'t1': 1, 't1ce': 2, 't2': 1, 'flair': 0}")


def test_unpaired_row_without_any_modality(tmp_path: Path, untouched) -> None:
    raw = tmp_path / "raw"
    rows = [manifest_case(raw, "c1"), ["c2", "", "", "", "", "files/c1_seg.nii.gz"]]
    table = write_manifest(raw, rows)
    source = DatasetSource("manifest", raw, MODS, manifest=table, unpaired=True)
    err = fail(source, tmp_path / "out", untouched)
    assert_one(err, table, "line 3: no modality file at all")


# ------------------------------------------------------------ several problems, then rerun


def test_all_problems_in_one_table_then_rerun_reuses_valid_cases(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    source = brats(raw, "ok1", "ok2", "b_missing", "b_shape", "b_label", "b_corrupt")
    (raw / "b_missing" / "b_missing_flair.nii.gz").unlink()
    save(raw / "b_shape" / "b_shape_t2.nii.gz", image_data(2, (8, 7, 5)))
    bad_label = label_data()
    bad_label[0, 0, 0] = 9
    save(raw / "b_label" / "b_label_seg.nii.gz", bad_label)
    (raw / "b_corrupt" / "b_corrupt_t1.nii.gz").write_bytes(b"garbage")
    nan_t1ce = image_data(1)
    nan_t1ce[0, 0, 0] = np.nan
    save(raw / "b_corrupt" / "b_corrupt_t1ce.nii.gz", nan_t1ce)

    before = tree_state(raw)
    err = fail(source, out, lambda *roots: None)
    assert tree_state(raw) == before  # (the files are fixed below, so checked here)

    lines = str(err).splitlines()
    assert lines[0] == f"{raw}: 5 data problems in 4 case(s):"
    assert lines[1].split() == ["case", "file", "problem"]
    table = lines[2:]
    assert len(table) == 5 == len(err.problems)
    expected = [  # case by case (adapter and reading problems alike), paths relative to raw
        ("b_corrupt", "b_corrupt/b_corrupt_t1.nii.gz", "cannot read NIfTI file"),
        ("b_corrupt", "b_corrupt/b_corrupt_t1ce.nii.gz", "1 NaN and 0 Inf voxels"),
        ("b_label", "b_label/b_label_seg.nii.gz", "unexpected label values [9]"),
        ("b_missing", "b_missing/b_missing_flair.nii.gz", "missing 'flair' image file"),
        ("b_shape", "b_shape/b_shape_t2.nii.gz", "shape (8, 7, 5) differs"),
    ]
    for line, (case, file, problem) in zip(table, expected, strict=True):
        assert line.split()[:2] == [case, file] and problem in line, line
    # The valid cases were written (and are reused below), the broken ones were not.
    valid = [p for case in ("ok1", "ok2") for p in case_paths(out, case)]
    assert all(p.is_file() for p in valid)
    assert not any(out.glob("b_*"))
    assert not (out / "dataset.json").exists()

    # Fix every file, rerun: success, the valid cases are not redone.
    for path in valid:
        os.utime(path, ns=(1, 1))  # a rewrite shows even on coarse-timestamp filesystems
    write_brats_case(raw / "b_missing")
    write_brats_case(raw / "b_shape")
    write_brats_case(raw / "b_label")
    write_brats_case(raw / "b_corrupt")

    result = preprocess_source(source, out, BRATS_LEGACY, progress=False)

    assert result["case"].tolist() == sorted(
        ["ok1", "ok2", "b_missing", "b_shape", "b_label", "b_corrupt"])
    assert all(p.stat().st_mtime_ns == 1 for p in valid)
    assert all(p.is_file() for case in ("b_missing", "b_shape") for p in case_paths(out, case))
    on_disk = pd.read_csv(out / "manifest.csv")
    assert on_disk["case"].tolist() == result["case"].tolist()
    # The fixed dataset's arrays equal a fresh run's.
    fresh = preprocess_source(source, tmp_path / "fresh", BRATS_LEGACY, progress=False)
    pd.testing.assert_frame_equal(fresh, result)
    for case in ("ok1", "b_label"):
        for mine, theirs in zip(case_paths(out, case)[:2], case_paths(tmp_path / "fresh", case)[:2],
                                strict=True):
            np.testing.assert_array_equal(np.load(mine), np.load(theirs))


def test_problems_across_adapter_and_reading_share_one_table(tmp_path: Path, untouched) -> None:
    """Adapter problems (duplicate row, path outside) and read problems (NaN) in one report."""
    raw = tmp_path / "raw"
    rows = [manifest_case(raw, c) for c in ("c1", "c2", "c3")]
    rows.append(list(rows[0]))  # duplicate c1
    rows[1][2] = "../x.nii.gz"  # c2's t1 outside
    table = write_manifest(raw, rows)
    nan = image_data(3)
    nan[1, 1, 1] = np.nan
    save(raw / "files" / "c3_flair.nii.gz", nan)
    err = fail(DatasetSource("manifest", raw, MODS, manifest=table), tmp_path / "out", untouched)
    assert str(err).startswith(f"{raw}: 3 data problems in 3 case(s):")
    assert [(p.case_id, p.path) for p in err.problems] == [
        ("c1", table), ("c2", table), ("c3", raw / "files" / "c3_flair.nii.gz")]
    assert [p.problem.split(":")[0] for p in err.problems[:2]] == ["line 5", "line 3"]
    assert "manifest.csv" in str(err) and "files/c3_flair.nii.gz" in str(err)


def test_nothing_left_after_resampling_is_a_problem_of_that_case(tmp_path: Path,
                                                                  untouched) -> None:
    """A speck of brain that a coarse target spacing loses: reported with the other problems
    (not a crash halfway through the pass)."""
    from kdseg.data.preprocess import PreprocessOptions

    source = brats(tmp_path / "raw", "c1", "c2")
    speck = np.zeros(SHAPE, dtype=np.float32)
    speck[0, 0, 0] = 5.0
    for mod in MODS:
        save(tmp_path / "raw" / "c2" / f"c2_{mod}.nii.gz", speck)
    save(tmp_path / "raw" / "c2" / "c2_seg.nii.gz", np.zeros(SHAPE, dtype=np.uint8))
    untouched(Path(source.root))
    with pytest.raises(DataError) as err:
        preprocess_source(source, tmp_path / "out", BRATS_LEGACY,
                          PreprocessOptions(target_spacing=(9.0, 9.0, 9.0)), progress=False)
    assert [p.case_id for p in err.value.problems] == ["c2"]
    assert "no brain voxel left" in str(err.value)
    assert not (tmp_path / "out" / "manifest.csv").exists()
