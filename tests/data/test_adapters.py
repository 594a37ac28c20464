"""Dataset adapters (kdseg.data.adapters), end-to-end preprocessing of every layout, splits.

Hand-made tiny files for the adapter rules; the synthetic dataset in every layout
(:func:`kdseg.data.layouts.write_layout`, 3 cases of 24 x 28 x 24) for the end-to-end runs.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from kdseg.data.adapters import (
    DatasetSource,
    available_modalities,
    case_id_problem,
    detect_brats_naming,
    find_dataset,
)
from kdseg.data.io import DataError
from kdseg.data.labels import (
    BRATS_2023,
    BRATS_LEGACY,
    MSD_BRATS,
    LabelConvention,
    get_convention,
)
from kdseg.data.layouts import (
    LABEL_MAPS,
    MANIFEST_NAMES,
    layout_case_files,
    layout_case_id,
    write_layout,
)
from kdseg.data.preprocess import (
    case_paths,
    cases_with_modalities,
    preprocess_source,
    reference_labels,
)
from kdseg.data.splits import make_splits, read_split_file
from kdseg.data.synthetic import SyntheticSpec

MODS = ("t1", "t1ce", "t2", "flair")
SHAPE = (6, 5, 4)
AFFINE = np.diag([-1.0, -1.0, 2.0, 1.0])
SYN10 = get_convention({
    "name": "syn10",
    "classes": {"background": 0, "NCR": 10, "ED": 20, "ET": 30},
    "regions": {"WT": [10, 20, 30], "TC": [10, 30], "ET": [30]},
})


# ------------------------------------------------------------------------------------ helpers


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def image_data(channel: int = 0) -> np.ndarray:
    return (np.arange(np.prod(SHAPE)).reshape(SHAPE) + 1.0 + 100 * channel).astype(np.float32)


def label_data() -> np.ndarray:
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[1, 1, 1], label[2, 2, 2], label[3, 3, 3] = 1, 2, 4
    return label


def write_brats_case(folder: Path, naming: str = "2018", mods: tuple[str, ...] = MODS,
                     label: bool = True) -> Path:
    """``folder/<case>_<mod>.nii.gz`` (2018) or ``folder/<case>-<mod>.nii.gz`` (2023 suffixes
    given in ``mods`` as they are), plus the label."""
    case, sep = folder.name, "-" if naming == "2023" else "_"
    for channel, mod in enumerate(mods):
        save(folder / f"{case}{sep}{mod}.nii.gz", image_data(channel))
    if label:
        save(folder / f"{case}{sep}seg.nii.gz", label_data())
    return folder


def write_msd(root: Path, cases: list[str], modality: dict[str, str]) -> None:
    """A tiny MSD folder: 4-D images with one volume per ``modality`` entry, 3-D labels."""
    for case in cases:
        stack = np.stack([image_data(v) for v in range(len(modality))], axis=-1)
        save(root / "imagesTr" / f"{case}.nii.gz", stack)
        save(root / "labelsTr" / f"{case}.nii.gz", label_data())
    training = [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                for c in cases]
    (root / "dataset.json").write_text(json.dumps({"modality": modality, "training": training}))


def write_table(path: Path, rows: list[list[str]], delimiter: str = ",") -> Path:
    with path.open("w", newline="") as handle:
        csv.writer(handle, delimiter=delimiter, lineterminator="\n").writerows(rows)
    return path


def ids(cases: list) -> list[str]:
    return [c.case_id for c in cases]


# ---------------------------------------------------------------------------------- BraTS


def test_brats_2018_group_folders_hgg_lgg(tmp_path: Path) -> None:
    write_brats_case(tmp_path / "HGG" / "Brats18_A_1")
    write_brats_case(tmp_path / "HGG" / "Brats18_A_2")
    write_brats_case(tmp_path / "LGG" / "Brats18_B_1")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("not a case")
    (tmp_path / "survival_data.csv").write_text("x")

    cases, problems = find_dataset(DatasetSource("brats", tmp_path, MODS))

    assert problems == []
    assert ids(cases) == ["Brats18_A_1", "Brats18_A_2", "Brats18_B_1"]
    lgg = tmp_path / "LGG" / "Brats18_B_1"
    assert cases[2].images == {m: lgg / f"Brats18_B_1_{m}.nii.gz" for m in MODS}
    assert cases[2].label == lgg / "Brats18_B_1_seg.nii.gz"
    assert cases[2].volumes == {}
    assert detect_brats_naming(tmp_path) == "2018"


def test_stray_nifti_in_a_group_folder_does_not_hide_its_cases(tmp_path: Path) -> None:
    write_brats_case(tmp_path / "HGG" / "a1")
    write_brats_case(tmp_path / "HGG" / "a2")
    write_brats_case(tmp_path / "LGG" / "b1")
    save(tmp_path / "HGG" / "mean_template.nii.gz", image_data())  # not a case file
    save(tmp_path / "c0" / "c0_t1.nii.gz", image_data())  # a case folder at the top level
    (tmp_path / "c0" / "extra").mkdir()  # ... with a sub-folder: still a case

    cases, problems = find_dataset(DatasetSource("brats", tmp_path, ("t1",),
                                                 require_label=False))

    assert ids(cases) == ["a1", "a2", "b1", "c0"] and problems == []


def test_brats_2023_naming_detected(tmp_path: Path) -> None:
    names = ("t1n", "t1c", "t2w", "t2f")
    for case in ("BraTS-GLI-00001-000", "BraTS-GLI-00000-000"):
        write_brats_case(tmp_path / case, naming="2023", mods=names)

    assert detect_brats_naming(tmp_path) == "2023"
    cases, problems = find_dataset(DatasetSource("brats", tmp_path, MODS))

    assert problems == []
    assert ids(cases) == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    folder = tmp_path / "BraTS-GLI-00000-000"
    assert cases[0].images == {
        m: folder / f"BraTS-GLI-00000-000-{n}.nii.gz" for m, n in zip(MODS, names, strict=True)
    }
    assert cases[0].label == folder / "BraTS-GLI-00000-000-seg.nii.gz"


def test_told_naming_overrides_detection(tmp_path: Path) -> None:
    # Both namings in one case folder (a converted copy): auto picks 2023, told 2018 wins.
    folder = write_brats_case(tmp_path / "c1")
    write_brats_case(folder, naming="2023", mods=("t1n", "t1c", "t2w", "t2f"))

    (auto,), _ = find_dataset(DatasetSource("brats", tmp_path, MODS))
    (told,), _ = find_dataset(DatasetSource("brats", tmp_path, MODS, naming="2018"))

    assert auto.images["t1"] == folder / "c1-t1n.nii.gz"
    assert told.images["t1"] == folder / "c1_t1.nii.gz"
    assert told.label == folder / "c1_seg.nii.gz"


def test_told_naming_that_does_not_match_finds_nothing(tmp_path: Path) -> None:
    write_brats_case(tmp_path / "c1")
    with pytest.raises(DataError, match="empty dataset folder: no cases found") as err:
        find_dataset(DatasetSource("brats", tmp_path, MODS, naming="2023"))
    assert str(err.value).startswith(f"{tmp_path}: ")


def test_brats_modality_files_and_uncompressed(tmp_path: Path) -> None:
    folder = tmp_path / "c1"
    save(folder / "c1_T1Gd.nii", image_data())
    save(folder / "c1_flair.nii.gz", image_data(1))
    save(folder / "c1_seg.nii.gz", label_data())
    source = DatasetSource("brats", tmp_path, ("t1ce", "flair"), modality_files={"t1ce": "T1Gd"})

    (case,), problems = find_dataset(source)

    assert problems == []
    assert case.images == {"t1ce": folder / "c1_T1Gd.nii", "flair": folder / "c1_flair.nii.gz"}


def test_synthetic_source_is_brats_2018(tmp_path: Path) -> None:
    write_brats_case(tmp_path / "SYN_0000")
    (case,), _ = find_dataset(DatasetSource("synthetic", tmp_path, MODS))
    assert case.images["t2"] == tmp_path / "SYN_0000" / "SYN_0000_t2.nii.gz"


# ------------------------------------------------------------------------------------ MSD

TASK01 = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}


def test_msd_modality_block_maps_volumes(tmp_path: Path) -> None:
    write_msd(tmp_path, ["BRATS_002", "BRATS_001"], TASK01)

    cases, problems = find_dataset(DatasetSource("msd", tmp_path, MODS))

    assert problems == []
    assert ids(cases) == ["BRATS_001", "BRATS_002"]
    image = tmp_path / "imagesTr" / "BRATS_001.nii.gz"
    assert cases[0].images == dict.fromkeys(MODS, image)
    assert cases[0].volumes == {"t1": 1, "t1ce": 2, "t2": 3, "flair": 0}
    assert cases[0].label == tmp_path / "labelsTr" / "BRATS_001.nii.gz"
    # A subset in another order takes just those volumes.
    (case, _), _ = find_dataset(DatasetSource("msd", tmp_path, ("flair", "t1ce")))
    assert case.volumes == {"flair": 0, "t1ce": 2}


def test_msd_modality_files_override_and_mismatch_error(tmp_path: Path) -> None:
    write_msd(tmp_path, ["BRATS_001"], {"0": "FLAIR", "1": "T1", "2": "T1-contrast"})
    source = DatasetSource("msd", tmp_path, ("t1", "t1ce", "flair"))

    with pytest.raises(DataError) as err:
        find_dataset(source)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'dataset.json'}: no modality in its 'modality' block")
    assert "'T1-contrast'" in message and "matches 't1ce'" in message
    assert "dataset.modality_files" in message

    mapped = DatasetSource("msd", tmp_path, ("t1", "t1ce", "flair"),
                           modality_files={"t1ce": "t1-CONTRAST"})  # case-insensitive
    (case,), _ = find_dataset(mapped)
    assert case.volumes == {"t1": 1, "t1ce": 2, "flair": 0}

    wrong = DatasetSource("msd", tmp_path, ("t1", "t1ce"), modality_files={"t1ce": "T1ce"})
    with pytest.raises(DataError, match="matches 't1ce'"):
        find_dataset(wrong)


# ------------------------------------------------------------------------------- manifest


def write_manifest_dataset(root: Path, name: str = "manifest.csv", delimiter: str = ",",
                           absolute: bool = False) -> Path:
    rows = [["case", "T1", "t1ce", "t2", "flair", "label"]]
    for case in ("p2", "p1"):
        cells = []
        for channel, mod in enumerate(MODS):
            path = save(root / "img" / f"{case}_{mod}.nii.gz", image_data(channel))
            cells.append(str(path) if absolute else str(path.relative_to(root)))
        label = save(root / "seg" / f"{case}.nii.gz", label_data())
        rows.append([case, *cells, str(label) if absolute else str(label.relative_to(root))])
    return write_table(root / name, rows, delimiter)


@pytest.mark.parametrize(
    ("name", "delimiter", "absolute"),
    [("manifest.csv", ",", False), ("manifest.tsv", "\t", False), ("list.csv", ",", True)],
    ids=["csv", "tsv", "absolute-inside-root"],
)
def test_manifest_table(tmp_path: Path, name: str, delimiter: str, absolute: bool) -> None:
    table = write_manifest_dataset(tmp_path, name, delimiter, absolute)
    source = DatasetSource("manifest", tmp_path, MODS, manifest=table,
                           modality_files={"t1": "T1"})

    cases, problems = find_dataset(source)

    assert problems == []
    assert ids(cases) == ["p1", "p2"]
    assert cases[0].images == {m: tmp_path / "img" / f"p1_{m}.nii.gz" for m in MODS}
    assert cases[0].label == tmp_path / "seg" / "p1.nii.gz"


def test_manifest_root_defaults_to_table_folder() -> None:
    source = DatasetSource.from_config(
        {"source": "manifest", "manifest": "/data/x/list.tsv", "modalities": ["t1"],
         "unpaired": True})
    assert source.root == Path("/data/x") and source.unpaired
    assert source.manifest == Path("/data/x/list.tsv")


def test_unpaired_manifest_leaves_cells_empty(tmp_path: Path) -> None:
    save(tmp_path / "a_t1ce.nii.gz", image_data())
    save(tmp_path / "b_flair.nii.gz", image_data())
    save(tmp_path / "c_t1ce.nii.gz", image_data())
    save(tmp_path / "c_flair.nii.gz", image_data())
    for case in "abc":
        save(tmp_path / f"{case}_seg.nii.gz", label_data())
    table = write_table(tmp_path / "m.csv", [
        ["case", "t1ce", "flair", "label"],
        ["a", "a_t1ce.nii.gz", "", "a_seg.nii.gz"],
        ["b", "", "b_flair.nii.gz", "b_seg.nii.gz"],
        ["c", "c_t1ce.nii.gz", "c_flair.nii.gz", "c_seg.nii.gz"],
    ])
    mods = ("t1ce", "flair")

    cases, problems = find_dataset(DatasetSource("manifest", tmp_path, mods, manifest=table,
                                                 unpaired=True))

    assert problems == []
    assert [sorted(c.images) for c in cases] == [["t1ce"], ["flair"], ["flair", "t1ce"]]
    assert available_modalities(cases, mods) == {"t1ce": 2, "flair": 2}
    # The same table read as paired reports each empty cell.
    _, paired = find_dataset(DatasetSource("manifest", tmp_path, mods, manifest=table))
    assert [(p.case_id, p.problem) for p in paired] == [
        ("a", "line 2: missing 'flair' image file (empty cell)"),
        ("b", "line 3: missing 't1ce' image file (empty cell)"),
    ]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"source": "nifti"}, "unknown 'nifti'"),
        ({"naming": "2020"}, "dataset.naming"),
        ({"modality_files": {"t2": "T2"}}, r"\['t2'\] are not in dataset.modalities"),
        ({"source": "manifest"}, "needs a CSV/TSV file"),
        ({"unpaired": True}, "only a manifest can describe unpaired"),
        ({"modalities": ("t1", "seg")}, "names the label file"),
    ],
)
def test_dataset_source_rejects_bad_settings(changes: dict, match: str) -> None:
    settings = {"source": "brats", "root": Path("x"), "modalities": ("t1",), **changes}
    with pytest.raises(ValueError, match=match):
        DatasetSource(**settings)


@pytest.mark.parametrize(
    ("case", "ok"),
    [("BraTS-GLI-00000-000", True), ("Brats18_2013_2_1", True), ("p.1", True),
     ("", False), ("a/b", False), ("a\\b", False), ("..", False), ("x..y", False),
     (".hidden", False), ("a b", False)],
)
def test_case_id_problem(case: str, ok: bool) -> None:
    assert (case_id_problem(case) is None) == ok


# ------------------------------------------------------------- every layout, preprocessed

LAYOUT_SPEC = SyntheticSpec(n_cases=3, shape=(24, 28, 24), seed=3, no_enhancing_fraction=0.0)
UNPAIRED_MODS = ("t1ce", "flair")


def layout_source(layout: str, root: Path) -> tuple[DatasetSource, LabelConvention]:
    if layout in ("brats", "brats2023"):
        convention = BRATS_LEGACY if layout == "brats" else BRATS_2023
        return DatasetSource("brats", root, MODS), convention
    if layout == "msd":
        return DatasetSource("msd", root, MODS), MSD_BRATS
    if layout == "manifest":
        renamed = {m: n for m, n in MANIFEST_NAMES.items() if m != n}
        return DatasetSource("manifest", root, MODS, manifest=root / "manifest.csv",
                             modality_files=renamed), SYN10
    return DatasetSource("manifest", root, UNPAIRED_MODS, manifest=root / "manifest.csv",
                         unpaired=True), BRATS_LEGACY


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """layout -> (raw folder, preprocessed folder), every layout of the same 3 cases."""
    base = tmp_path_factory.mktemp("layouts")
    out = {}
    for layout in ("brats", "brats2023", "msd", "manifest", "unpaired"):
        raw, pre = base / layout, base / f"{layout}_pre"
        write_layout(raw, LAYOUT_SPEC, layout, progress=False)
        source, convention = layout_source(layout, raw)
        preprocess_source(source, pre, convention, progress=False)
        out[layout] = (raw, pre)
    return out


@pytest.mark.parametrize("layout", ["brats", "brats2023", "msd", "manifest", "unpaired"])
def test_preprocess_every_layout(preprocessed: dict[str, tuple[Path, Path]], layout: str) -> None:
    raw, pre = preprocessed[layout]
    _, convention = layout_source(layout, raw)
    manifest = pd.read_csv(pre / "manifest.csv", dtype={"case": str})

    assert len(manifest) == LAYOUT_SPEC.n_cases
    if layout == "unpaired":
        assert manifest["modalities"].tolist() == ["t1ce", "flair", "t1ce"]
    else:
        assert set(manifest["modalities"]) == {"t1+t1ce+t2+flair"}
    fingerprint = json.loads((pre / "dataset.json").read_text())
    assert fingerprint["label_convention"] == convention.name
    assert fingerprint["unpaired"] == (layout == "unpaired")

    cases = manifest["case"].tolist()
    references = reference_labels(pre, cases)
    for index, case in enumerate(cases):
        label_file = layout_case_files(raw, layout, index)["seg"]
        assert references[case] == label_file.resolve()
        stored = np.asarray(nib.load(label_file).dataobj)
        assert set(np.unique(stored)) <= set(convention.label_values)
        # Nothing resampled and the crop keeps every labelled voxel: foreground counts survive.
        row = manifest.iloc[index]
        for name, value in zip(convention.class_names[1:], convention.label_values[1:],
                               strict=True):
            assert row[f"voxels_{name}"] == np.count_nonzero(stored == value) > 0, name


def test_layouts_give_the_same_arrays(preprocessed: dict[str, tuple[Path, Path]]) -> None:
    """Same cases in 4 paired layouts: identical images; classes identical up to MSD's order."""
    for index in range(LAYOUT_SPEC.n_cases):
        image_path, label_path, _ = case_paths(preprocessed["brats"][1], f"SYN_{index:04d}")
        image, classes = np.load(image_path), np.load(label_path)
        for layout in ("brats2023", "msd", "manifest"):
            pre = preprocessed[layout][1]
            other_image, other_label, _ = case_paths(pre, layout_case_id(layout, index))
            other = np.load(other_label)
            if layout == "msd":  # MSD class 1 is edema, 2 the core: swap back
                other = np.choose(other, [0, 2, 1, 3]).astype(np.uint8)
            np.testing.assert_array_equal(np.load(other_image), image, err_msg=layout)
            np.testing.assert_array_equal(other, classes, err_msg=layout)


def test_manifest_label_map_syn10(preprocessed: dict[str, tuple[Path, Path]]) -> None:
    raw, pre = preprocessed["manifest"]
    assert LABEL_MAPS["manifest"] == {0: 0, 1: 10, 2: 20, 4: 30}
    stored = np.asarray(nib.load(raw / "labels" / "SYN_0000_label.nii.gz").dataobj)
    assert set(np.unique(stored)) == {0, 10, 20, 30}
    classes = np.load(case_paths(pre, "SYN_0000")[1])
    assert set(np.unique(classes)) == {0, 1, 2, 3}
    # The brats convention refuses these values and names them.
    source, _ = layout_source("manifest", raw)
    with pytest.raises(DataError, match=r"unexpected label values \[10, 20, 30\]"):
        preprocess_source(source, pre.parent / "refused", BRATS_LEGACY, progress=False)


def test_unpaired_preprocessed_channels(preprocessed: dict[str, tuple[Path, Path]]) -> None:
    _, pre = preprocessed["unpaired"]
    cases = ["SYN_0000", "SYN_0001", "SYN_0002"]
    assert cases_with_modalities(pre, cases, ["t1ce"]) == ["SYN_0000", "SYN_0002"]
    assert cases_with_modalities(pre, cases, ["flair"]) == ["SYN_0001"]
    assert cases_with_modalities(pre, cases, UNPAIRED_MODS) == []
    image = np.load(case_paths(pre, "SYN_0001")[0])
    assert image.shape[0] == 2 and not image[0].any() and image[1].any()  # t1ce absent
    record = json.loads(case_paths(pre, "SYN_0001")[2].read_text())
    assert record["available_modalities"] == ["flair"] and list(record["zscore"]) == ["flair"]
    fingerprint = json.loads((pre / "dataset.json").read_text())
    assert fingerprint["cases_per_modality"] == {"t1ce": 2, "flair": 1}


# --------------------------------------------------------------------------------- splits

CASES = [f"C{i:02d}" for i in range(8)]


def test_read_split_csv_and_tsv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [["case", "split"], ["C00", "train"], ["C01", "train"], ["C02", "val"],
            ["C03", "test"], ["C04", "train"]]
    for name, delimiter in (("s.csv", ","), ("s.tsv", "\t")):
        split = read_split_file(write_table(tmp_path / name, rows, delimiter), CASES)
        assert split == {"fold": 0, "train": ["C00", "C01", "C04"], "val": ["C02"],
                         "test": ["C03"]}
    assert "3 dataset case(s) are in no split" in capsys.readouterr().out


def test_read_split_protokd_folder(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train_list.txt").write_text("C00\nC01\r\nC02\n\n")
    (folder / "val_list.txt").write_text("C03\n")
    (folder / "test_list.txt").write_text(" C04 \nC05\nC06\nC07\n")

    split = read_split_file(folder, CASES)

    assert split == {"fold": 0, "train": ["C00", "C01", "C02"], "val": ["C03"],
                     "test": ["C04", "C05", "C06", "C07"]}
    (folder / "val_list.txt").unlink()  # no validation list: allowed
    assert read_split_file(folder, CASES)["val"] == []
    (folder / "test_list.txt").unlink()
    with pytest.raises(ValueError, match=r"no test_list\.txt or test\.txt case list") as err:
        read_split_file(folder, CASES)
    assert str(err.value).startswith(str(folder))


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([["C00", "train"], ["C99", "test"]], r"1 listed case\(s\) are not in the dataset.*C99"),
        ([["C00", "train"], ["C01", "test"], ["C00", "test"]],
         r"cases listed more than once: \['C00'\]"),
        ([["C00", "train"], ["C01", "testing"]], r"unknown split names \['testing'\]"),
        ([["C00", "train"], ["C01", ""]], r"unknown split names \[''\]"),
        ([["C00", "train"], ["C01", "val"]], "needs training and test cases"),
    ],
    ids=["unknown-case", "duplicate", "bad-split-name", "empty-split", "no-test"],
)
def test_read_split_file_errors(tmp_path: Path, rows: list[list[str]], match: str) -> None:
    path = write_table(tmp_path / "split.csv", [["case", "split"], *rows])
    with pytest.raises(ValueError, match=match) as err:
        read_split_file(path, CASES)
    assert str(err.value).startswith(f"{path}: ")


def test_read_split_file_errors_of_the_file_itself(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(ValueError, match="cannot read split file") as err:
        read_split_file(missing, CASES)
    assert str(err.value).startswith(str(missing))
    columns = write_table(tmp_path / "cols.csv", [["id", "split"], ["C00", "train"]])
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['case'\]"):
        read_split_file(columns, CASES)
    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "train_list.txt").write_text("C00\n")
    (folder / "test_list.txt").write_text("C01\nC00\n")  # in two lists
    with pytest.raises(ValueError, match=r"more than once: \['C00'\]"):
        read_split_file(folder, CASES)


@pytest.mark.parametrize("folds", [1, 3])
def test_make_splits_strata_keep_every_group_in_train_and_test(folds: int) -> None:
    cases = [f"S{i:02d}" for i in range(14)]
    strata = {c: ("t1ce" if i < 10 else "flair") for i, c in enumerate(cases)}

    splits = make_splits(cases, folds=folds, test_fraction=0.3, val_fraction=0.2, seed=4,
                         strata=strata)

    assert len(splits) == folds
    for split in splits:
        for key in ("train", "test"):
            assert {strata[c] for c in split[key]} == {"t1ce", "flair"}, (key, split)
        together = split["train"] + split["val"] + split["test"]
        assert sorted(together) == cases
    if folds > 1:
        assert sorted(c for s in splits for c in s["test"]) == cases
    # Same result whatever the case order; each group split exactly as on its own.
    assert make_splits(cases[::-1], folds, 0.3, 0.2, 4, strata) == splits
    alone = make_splits(cases[10:], folds, 0.3, 0.2, 4)
    for merged, part in zip(splits, alone, strict=True):
        assert [c for c in merged["test"] if strata[c] == "flair"] == part["test"]


def test_make_splits_strata_too_small_are_merged_into_the_largest() -> None:
    """Two fully paired cases in an unpaired dataset cannot be split on their own: they join
    the largest stratum instead of making the whole dataset unsplittable."""
    cases = [f"S{i}" for i in range(10)]
    strata = {c: ("t1ce" if i < 4 else "flair" if i < 8 else "flair+t1ce")
              for i, c in enumerate(cases)}
    (split,) = make_splits(cases, 1, 0.3, 0.2, 0, strata=strata)
    assigned = split["train"] + split["val"] + split["test"]
    assert sorted(assigned) == sorted(cases)
    for group in ("t1ce", "flair"):
        members = {c for c in cases if strata[c] == group}
        assert members & set(split["train"]) and members & set(split["test"])
    # A single stratum is the plain split.
    same = dict.fromkeys(cases, "t1ce")
    assert make_splits(cases, 1, 0.3, 0.2, 0, same) == make_splits(cases, 1, 0.3, 0.2, 0)


# ------------------------------------------------------------------ review fixes (regressions)


def test_resume_redoes_cases_whose_modality_mapping_changed(tmp_path: Path) -> None:
    """Same files, other volume -> modality mapping: the arrays must follow, not be resumed."""
    root, out = tmp_path / "msd", tmp_path / "out"
    write_msd(root, ["BRATS_001", "BRATS_002", "BRATS_003"],
              {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"})
    for label in (root / "labelsTr").glob("*.nii.gz"):  # MSD values: 1, 2, 3
        save(label, np.minimum(label_data(), 3))
    first = DatasetSource("msd", root, MODS)
    preprocess_source(first, out, MSD_BRATS, progress=False)
    before = np.load(out / "BRATS_001_image.npy")
    swapped = DatasetSource("msd", root, MODS, modality_files={"t1": "T2w", "t2": "T1w"})
    preprocess_source(swapped, out, MSD_BRATS, progress=False)
    after = np.load(out / "BRATS_001_image.npy")
    t1, t2 = MODS.index("t1"), MODS.index("t2")
    np.testing.assert_array_equal(after[t1], before[t2])
    np.testing.assert_array_equal(after[t2], before[t1])


def test_msd_two_modalities_on_one_volume_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "msd"
    write_msd(root, ["BRATS_001"], {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"})
    source = DatasetSource("msd", root, MODS, modality_files={"t1": "T2w"})
    with pytest.raises(DataError, match=r"'t1' and 't2' both map to volume 3"):
        find_dataset(source)


def test_manifest_skips_empty_rows_and_reads_windows_paths(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for channel, mod in enumerate(MODS):
        save(root / "img" / f"c1_{mod}.nii.gz", image_data(channel))
    save(root / "lab" / "c1_seg.nii.gz", label_data())
    cells = [f"img\\c1_{m}.nii.gz" for m in MODS]
    table = write_table(root / "m.csv", [["case", *MODS, "label"],
                                          ["c1", *cells, "lab\\c1_seg.nii.gz"],
                                          [""] * (len(MODS) + 2)])
    cases, problems = find_dataset(DatasetSource("manifest", root, MODS, manifest=table))
    assert not problems
    assert ids(cases) == ["c1"] and cases[0].images["t1"] == root / "img" / "c1_t1.nii.gz"


def test_custom_label_map_order_does_not_depend_on_the_mapping_order() -> None:
    a = get_convention({"name": "m", "classes": {"RV": 600, "background": 0, "LV": 500},
                        "regions": {"RV": [600], "heart": [600, 500], "LV": 500}})
    b = get_convention({"name": "m", "classes": {"LV": 500, "RV": 600, "background": 0},
                        "regions": {"LV": [500], "RV": [600], "heart": [500, 600]}})
    assert a == b
    assert a.label_values == (0, 500, 600) and a.class_names == ("background", "LV", "RV")
    assert a.region_names == ("heart", "LV", "RV") and a.label_dtype == np.uint16
    brats_like = get_convention({"name": "b", "classes": {"bg": 0, "NCR": 1, "ED": 2, "ET": 4},
                                 "regions": {"ET": [4], "WT": [1, 2, 4], "TC": [1, 4]}})
    assert brats_like.region_names == ("WT", "TC", "ET")
    with pytest.raises(ValueError, match="at most 256 classes"):
        get_convention({"name": "x", "classes": {f"c{i}": i for i in range(300)}})
