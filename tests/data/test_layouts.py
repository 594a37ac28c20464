"""Tests of the synthetic dataset in real datasets' layouts (kdseg.data.layouts).

Tiny grids (24 x 28 x 24, 4-5 cases); every layout is written once per module and compared with
the plain BraTS-layout output of :func:`synthesize_dataset` for the same spec.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from kdseg.cli import build_parser, main
from kdseg.data import layouts, synthetic
from kdseg.data.layouts import (
    LAYOUTS,
    MIXED_CYCLE,
    MSD_ORDER,
    ORIENTATIONS,
    RECORD_NAME,
    layout_case_files,
    reorient,
    write_layout,
)
from kdseg.data.synthetic import (
    MODALITIES,
    SyntheticDatasetMismatchError,
    SyntheticSpec,
    case_id,
    synthesize_dataset,
)

SHAPE = (24, 28, 24)
KEYS = (*MODALITIES, "seg")


@pytest.fixture(scope="module")
def spec() -> SyntheticSpec:
    # All cases enhancing, so every label value is present in every case.
    return SyntheticSpec(n_cases=4, shape=SHAPE, seed=5, no_enhancing_fraction=0.0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, spec: SyntheticSpec) -> Path:
    """The plain BraTS-layout dataset of ``spec``."""
    out = tmp_path_factory.mktemp("reference") / "raw"
    synthesize_dataset(out, spec, progress=False)
    return out


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, spec: SyntheticSpec) -> dict[str, Path]:
    """Every layout in native geometry, plus a few geometry variants of ``manifest``."""
    root = tmp_path_factory.mktemp("layouts")
    out = {}
    for layout in LAYOUTS:
        out[layout] = root / layout
        write_layout(out[layout], spec, layout, progress=False)
    for orientation in ("lps", "ras", "oblique", "permuted", "mixed"):
        out[orientation] = root / f"manifest_{orientation}"
        write_layout(out[orientation], spec, "manifest", orientation, progress=False)
    out["anisotropic"] = root / "brats2023_anisotropic"
    write_layout(out["anisotropic"], spec, "brats2023", "mixed", anisotropic=True, progress=False)
    return out


def _ref(reference: Path, index: int, key: str) -> nib.Nifti1Image:
    return nib.load(reference / case_id(index) / f"{case_id(index)}_{key}.nii.gz")


def _data(image: nib.Nifti1Image) -> np.ndarray:
    return np.asarray(image.dataobj)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _assert_nifti(image: nib.Nifti1Image) -> None:
    assert isinstance(image, nib.Nifti1Image)
    assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1


# --- layouts -----------------------------------------------------------------------------------
def test_brats_native_is_synthesize_dataset_byte_for_byte(
    tmp_path: Path, spec: SyntheticSpec, reference: Path
) -> None:
    out = tmp_path / "brats"
    assert write_layout(out, spec, "brats", progress=False) == [case_id(i) for i in range(4)]
    assert _files(out) == _files(reference)
    for name in _files(out):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def test_brats2023_names_labels_and_images(written: dict[str, Path], reference: Path) -> None:
    root = written["brats2023"]
    ids = [f"BraTS-GLI-{i:05d}-000" for i in range(4)]
    suffixes = ("seg", "t1c", "t1n", "t2f", "t2w")
    assert _files(root) == sorted(
        [f"{c}/{c}-{s}.nii.gz" for c in ids for s in suffixes]
        + ["README.txt", RECORD_NAME]
    )
    renamed = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}
    for index, cid in enumerate(ids):
        for key in KEYS:
            image = nib.load(root / cid / f"{cid}-{renamed[key]}.nii.gz")
            ref = _ref(reference, index, key)
            _assert_nifti(image)
            np.testing.assert_array_equal(image.affine, ref.affine)
            expected = _data(ref)
            if key == "seg":
                expected = np.where(expected == 4, 3, expected)
                assert set(np.unique(_data(image)).tolist()) == {0, 1, 2, 3}
            np.testing.assert_array_equal(_data(image), expected)
            assert image.get_data_dtype() == ref.get_data_dtype()


def test_msd_dataset_json(written: dict[str, Path]) -> None:
    root = written["msd"]
    dataset = json.loads((root / "dataset.json").read_text())
    assert dataset["name"] == "BRATS" and dataset["tensorImageSize"] == "4D"
    assert dataset["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert dataset["labels"] == {
        "0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"
    }
    assert dataset["numTraining"] == 4 and dataset["numTest"] == 0 and dataset["test"] == []
    assert dataset["training"][0] == {
        "image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"
    }
    assert isinstance(dataset["description"], str)
    for entry in dataset["training"]:
        assert (root / entry["image"]).is_file() and (root / entry["label"]).is_file()
    assert sorted(p.name for p in root.iterdir()) == [
        "README.txt", "dataset.json", "imagesTr", "labelsTr", RECORD_NAME
    ]


def test_msd_4d_image_volume_order_and_labels(written: dict[str, Path], reference: Path) -> None:
    root = written["msd"]
    assert MSD_ORDER == ("flair", "t1", "t1ce", "t2")
    for index in range(4):
        image = nib.load(root / "imagesTr" / f"BRATS_{index + 1:03d}.nii.gz")
        label = nib.load(root / "labelsTr" / f"BRATS_{index + 1:03d}.nii.gz")
        ref_seg = _ref(reference, index, "seg")
        _assert_nifti(image)
        _assert_nifti(label)
        assert image.shape == (*SHAPE, 4) and image.get_data_dtype() == np.float32
        assert image.header.get_zooms()[3] == 1.0
        assert image.header.get_zooms()[:3] == ref_seg.header.get_zooms()
        np.testing.assert_array_equal(image.affine, ref_seg.affine)
        np.testing.assert_array_equal(label.affine, ref_seg.affine)
        volumes = _data(image)
        for k, modality in enumerate(MSD_ORDER):
            np.testing.assert_array_equal(volumes[..., k], _data(_ref(reference, index, modality)))
        assert label.get_data_dtype() == np.uint8 and label.shape == SHAPE
        seg, msd = _data(ref_seg), _data(label)
        assert set(np.unique(msd).tolist()) == {0, 1, 2, 3}
        for brats_value, msd_value in ((0, 0), (2, 1), (1, 2), (4, 3)):
            np.testing.assert_array_equal(msd == msd_value, seg == brats_value)


def test_manifest_csv_names_and_label_map(written: dict[str, Path], reference: Path) -> None:
    root = written["manifest"]
    table = pd.read_csv(root / "manifest.csv")
    assert list(table.columns) == ["case", "t1w", "t1gd", "t2w", "flair", "label"]
    assert table["case"].tolist() == [case_id(i) for i in range(4)]
    assert table.loc[1, "t1gd"] == "images/SYN_0001_t1gd.nii.gz"
    assert table.loc[1, "label"] == "labels/SYN_0001_label.nii.gz"
    renamed = {"t1w": "t1", "t1gd": "t1ce", "t2w": "t2", "flair": "flair", "label": "seg"}
    for index, row in table.iterrows():
        for column, key in renamed.items():
            image = nib.load(root / row[column])
            ref = _ref(reference, int(index), key)
            np.testing.assert_array_equal(image.affine, ref.affine)
            if key == "seg":
                assert set(np.unique(_data(image)).tolist()) == {0, 10, 20, 30}
                np.testing.assert_array_equal(_data(image), _data(ref) * np.uint8(10)
                                              - (_data(ref) == 4) * np.uint8(10))
            else:
                np.testing.assert_array_equal(_data(image), _data(ref))
    assert len(_files(root / "images")) == 16 and len(_files(root / "labels")) == 4


def test_unpaired_one_modality_per_case(written: dict[str, Path], reference: Path) -> None:
    root = written["unpaired"]
    table = pd.read_csv(root / "manifest.csv", keep_default_na=False)
    assert list(table.columns) == ["case", "t1ce", "flair", "label"]
    assert table["t1ce"].tolist() == [
        "images/SYN_0000_t1ce.nii.gz", "", "images/SYN_0002_t1ce.nii.gz", ""
    ]
    assert table["flair"].tolist() == [
        "", "images/SYN_0001_flair.nii.gz", "", "images/SYN_0003_flair.nii.gz"
    ]
    assert table["label"].tolist() == [f"labels/{case_id(i)}_seg.nii.gz" for i in range(4)]
    assert _files(root / "images") == [
        "SYN_0000_t1ce.nii.gz", "SYN_0001_flair.nii.gz",
        "SYN_0002_t1ce.nii.gz", "SYN_0003_flair.nii.gz",
    ]
    for index, row in table.iterrows():
        modality = "t1ce" if index % 2 == 0 else "flair"
        np.testing.assert_array_equal(_data(nib.load(root / row[modality])),
                                      _data(_ref(reference, int(index), modality)))
        seg = _data(nib.load(root / row["label"]))
        assert set(np.unique(seg).tolist()) == {0, 1, 2, 4}
        np.testing.assert_array_equal(seg, _data(_ref(reference, int(index), "seg")))


def test_readme_and_record(written: dict[str, Path], spec: SyntheticSpec) -> None:
    readme = (written["manifest"] / "README.txt").read_text()
    assert "'manifest' layout" in readme and "10 NCR, 20 ED, 30 ET" in readme
    assert "1 edema, 2 non-enhancing tumor, 3 enhancing tumour" in (
        written["msd"] / "README.txt").read_text()
    record = json.loads((written["anisotropic"] / RECORD_NAME).read_text())
    assert record["layout"] == "brats2023" and record["orientation"] == "mixed"
    assert record["anisotropic"] is True and record["complete"] is True
    assert SyntheticSpec(**record["spec"]) == spec


# --- geometry ----------------------------------------------------------------------------------
def _case_images(root: Path, index: int) -> list[nib.Nifti1Image]:
    return [nib.load(p) for p in layout_case_files(root, "manifest", index).values()]


def _ref_manifest(reference: Path, index: int, key: str) -> nib.Nifti1Image:
    """Reference file of the ``manifest`` layout: labels renumbered 1, 2, 4 -> 10, 20, 30."""
    ref = _ref(reference, index, key)
    if key != "seg":
        return ref
    return nib.Nifti1Image(layouts.relabel(_data(ref), "manifest"), ref.affine, ref.header)


def _assert_same_world_voxels(image: nib.Nifti1Image, ref: nib.Nifti1Image) -> None:
    canonical, ref_canonical = nib.as_closest_canonical(image), nib.as_closest_canonical(ref)
    np.testing.assert_array_equal(_data(canonical), _data(ref_canonical))
    np.testing.assert_array_equal(canonical.affine, ref_canonical.affine)


@pytest.mark.parametrize(("orientation", "codes"), [("lps", ("L", "P", "S")),
                                                    ("ras", ("R", "A", "S")),
                                                    ("permuted", ("S", "L", "P"))])
def test_reoriented_files_keep_world_positions(
    written: dict[str, Path], reference: Path, orientation: str, codes: tuple[str, ...]
) -> None:
    for index in range(4):
        images = _case_images(written[orientation], index)
        for image, key in zip(images, KEYS, strict=True):
            _assert_nifti(image)
            assert nib.aff2axcodes(image.affine) == codes
            assert image.affine.tobytes() == images[0].affine.tobytes()
            _assert_same_world_voxels(image, _ref_manifest(reference, index, key))
        if orientation == "permuted":
            assert images[0].shape == (SHAPE[2], SHAPE[0], SHAPE[1])


def test_lps_reorders_a_non_lps_array() -> None:
    """The generator's grid is already LPS; from RAS, ``lps`` must flip axes 0 and 1."""
    data = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = [10, 20, 30]
    lps, lps_affine = reorient(data, affine, "lps")
    np.testing.assert_array_equal(lps, data[::-1, ::-1])
    assert nib.aff2axcodes(lps_affine) == ("L", "P", "S")
    # Voxel (0, 0, 0) of the result is the old voxel (1, 2, 0).
    np.testing.assert_allclose(nib.affines.apply_affine(lps_affine, [0, 0, 0]),
                               nib.affines.apply_affine(affine, [1, 2, 0]))
    back, back_affine = reorient(lps, lps_affine, "ras")
    np.testing.assert_array_equal(back, data)
    np.testing.assert_allclose(back_affine, affine)


def test_oblique_rotates_the_affine_only(written: dict[str, Path], reference: Path) -> None:
    for index in range(4):
        images = _case_images(written["oblique"], index)
        ref = _ref(reference, index, "t1")
        direction = images[0].affine[:3, :3] / np.linalg.norm(images[0].affine[:3, :3], axis=0)
        off_diagonal = direction - np.diag(np.diag(direction))
        assert np.abs(off_diagonal).max() > 0.1  # not axis-aligned
        np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-6)  # rotation
        np.testing.assert_allclose(images[0].header.get_zooms(), ref.header.get_zooms())
        centre = (np.asarray(SHAPE) - 1) / 2
        np.testing.assert_allclose(nib.affines.apply_affine(images[0].affine, centre),
                                   nib.affines.apply_affine(ref.affine, centre), atol=1e-4)
        for image, key in zip(images, KEYS, strict=True):
            _assert_nifti(image)
            np.testing.assert_allclose(image.get_qform(), image.get_sform(), atol=1e-4)
            assert image.affine.tobytes() == images[0].affine.tobytes()
            np.testing.assert_array_equal(_data(image), _data(_ref_manifest(reference, index, key)))


def test_mixed_cycles_orientations(written: dict[str, Path]) -> None:
    assert MIXED_CYCLE == ("native", "ras", "oblique", "permuted")
    for index, orientation in enumerate(MIXED_CYCLE):
        mixed = _case_images(written["mixed"], index)
        single = _case_images(written[orientation if orientation != "native" else "manifest"],
                              index)
        for a, b in zip(mixed, single, strict=True):
            np.testing.assert_array_equal(a.affine, b.affine)
            np.testing.assert_array_equal(_data(a), _data(b))


def test_anisotropic_halves_slices_and_doubles_spacing(
    written: dict[str, Path], reference: Path
) -> None:
    root = written["anisotropic"]  # brats2023, mixed: orientation applied after slicing
    renamed = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}
    for index in range(4):
        cid = f"BraTS-GLI-{index:05d}-000"
        images = {key: nib.load(root / cid / f"{cid}-{renamed[key]}.nii.gz") for key in KEYS}
        expected_shape = (SHAPE[0], SHAPE[1], SHAPE[2] // 2)
        if MIXED_CYCLE[index] == "permuted":
            expected_shape = (SHAPE[2] // 2, SHAPE[0], SHAPE[1])
        for key, image in images.items():
            assert image.shape == expected_shape
            assert image.affine.tobytes() == images["seg"].affine.tobytes()
            ref = _ref(reference, index, key)
            ref_data = _data(ref)[:, :, ::2]
            if key == "seg":
                ref_data = np.where(ref_data == 4, 3, ref_data)
            ref_affine = ref.affine.copy()
            ref_affine[:3, 2] *= 2
            thinned = nib.Nifti1Image(ref_data, ref_affine)
            if MIXED_CYCLE[index] == "oblique":
                np.testing.assert_array_equal(_data(image), ref_data)
            else:
                _assert_same_world_voxels(image, thinned)
        zooms = sorted(images["seg"].header.get_zooms())
        ref_zooms = _ref(reference, index, "seg").header.get_zooms()
        np.testing.assert_allclose(zooms, sorted([*ref_zooms[:2], 2 * ref_zooms[2]]), rtol=1e-6)


# --- refusal, resume, atomicity ----------------------------------------------------------------
def test_bad_choices_are_refused(tmp_path: Path, spec: SyntheticSpec) -> None:
    with pytest.raises(ValueError, match=r"^layout:"):
        write_layout(tmp_path / "a", spec, "nnunet", progress=False)
    with pytest.raises(ValueError, match=r"^orientation:"):
        write_layout(tmp_path / "b", spec, "msd", "sideways", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_other_settings_and_foreign_folders_are_refused(
    written: dict[str, Path], reference: Path, spec: SyntheticSpec, tmp_path: Path
) -> None:
    root = written["msd"]
    before = _files(root)
    record = (root / RECORD_NAME).read_text()
    with pytest.raises(SyntheticDatasetMismatchError, match=r"other settings.*seed: 5 there, 6"):
        write_layout(root, replace(spec, seed=6), "msd", progress=False)
    with pytest.raises(SyntheticDatasetMismatchError, match="orientation: 'native' there, 'lps'"):
        write_layout(root, spec, "msd", "lps", progress=False)
    with pytest.raises(SyntheticDatasetMismatchError, match="layout: 'msd' there, 'manifest'"):
        write_layout(root, spec, "manifest", progress=False)
    with pytest.raises(SyntheticDatasetMismatchError, match="anisotropic: False there, True"):
        write_layout(root, spec, "msd", anisotropic=True, progress=False)
    # brats folders and layout folders refuse each other (different record names).
    with pytest.raises(SyntheticDatasetMismatchError, match="not a synthetic"):
        write_layout(root, spec, "brats", progress=False)
    with pytest.raises(SyntheticDatasetMismatchError, match="not a synthetic layout folder"):
        write_layout(reference, spec, "brats", "lps", progress=False)
    assert _files(root) == before and (root / RECORD_NAME).read_text() == record

    foreign = tmp_path / "foreign"
    (foreign / "imagesTr").mkdir(parents=True)
    with pytest.raises(SyntheticDatasetMismatchError, match="not a synthetic layout folder"):
        write_layout(foreign, spec, "msd", progress=False)
    assert [p.name for p in foreign.iterdir()] == ["imagesTr"]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / RECORD_NAME).write_text("[1, 2]")
    with pytest.raises(SyntheticDatasetMismatchError, match="unreadable"):
        write_layout(broken, spec, "msd", progress=False)


def test_resume_regenerates_only_missing_cases(
    tmp_path: Path, spec: SyntheticSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "unpaired"
    small = replace(spec, n_cases=3)
    write_layout(out, small, "unpaired", "permuted", progress=False)
    kept = {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    victim = out / "labels" / "SYN_0001_seg.nii.gz"
    before = victim.read_bytes()
    victim.unlink()
    (out / "manifest.csv").unlink()

    generated: list[int] = []
    real = synthetic.synthesize_case

    def counting(spec: SyntheticSpec, index: int) -> dict[str, nib.Nifti1Image]:
        generated.append(index)
        return real(spec, index)

    monkeypatch.setattr(synthetic, "synthesize_case", counting)
    assert write_layout(out, small, "unpaired", "permuted", progress=False) == [
        "SYN_0000", "SYN_0001", "SYN_0002"
    ]
    assert generated == [1]
    assert victim.read_bytes() == before
    assert (out / "manifest.csv").is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items() if "SYN_0001" not in p.name)
    write_layout(out, small, "unpaired", "permuted", progress=False)
    assert generated == [1]


def test_interrupted_write_leaves_no_partial_file(
    tmp_path: Path, spec: SyntheticSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "msd"
    small = replace(spec, n_cases=2)
    real_save = nib.save
    calls: list[Path] = []

    def crash_on_third_file(image: nib.Nifti1Image, filename: Path) -> None:
        calls.append(Path(filename))
        if len(calls) == 3:
            Path(filename).write_bytes(b"\x1f\x8b truncated")
            raise KeyboardInterrupt
        real_save(image, filename)

    monkeypatch.setattr(nib, "save", crash_on_third_file)
    with pytest.raises(KeyboardInterrupt):
        write_layout(out, small, "msd", progress=False)
    assert _files(out) == sorted([
        "README.txt", RECORD_NAME, "imagesTr/BRATS_001.nii.gz", "labelsTr/BRATS_001.nii.gz"
    ])
    assert all(c.name.startswith(".") for c in calls)
    assert json.loads((out / RECORD_NAME).read_text())["complete"] is False
    assert not (out / "dataset.json").exists()

    (out / "imagesTr" / ".BRATS_002.partial-0123456789ab.nii.gz").write_bytes(b"junk")
    monkeypatch.setattr(nib, "save", real_save)
    write_layout(out, small, "msd", progress=False)
    assert json.loads((out / RECORD_NAME).read_text())["complete"] is True
    assert not list(out.rglob(".*"))
    assert nib.load(out / "imagesTr" / "BRATS_002.nii.gz").shape == (*SHAPE, 4)


# --- command line ------------------------------------------------------------------------------
def _synthesize_args(out: Path, *extra: str) -> list[str]:
    return ["synthesize", "--out", str(out), "--n-cases", "2", "--shape", *map(str, SHAPE),
            "--seed", "5", "--no-enhancing-fraction", "0", *extra]


def test_cli_layout_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "msd"
    assert main(_synthesize_args(out, "--layout", "msd", "--orientation", "lps",
                                 "--anisotropic")) == 0
    assert "2 synthetic cases in" in capsys.readouterr().out
    record = json.loads((out / RECORD_NAME).read_text())
    assert (record["layout"], record["orientation"], record["anisotropic"]) == (
        "msd", "lps", True)
    assert nib.load(out / "imagesTr" / "BRATS_002.nii.gz").shape == (*SHAPE[:2], SHAPE[2] // 2, 4)

    # Defaults: today's output, byte for byte.
    plain, direct = tmp_path / "plain", tmp_path / "direct"
    assert main(_synthesize_args(plain)) == 0
    assert capsys.readouterr().out == f"2 synthetic cases in {plain}\n"
    synthesize_dataset(direct, SyntheticSpec(n_cases=2, shape=SHAPE, seed=5,
                                             no_enhancing_fraction=0.0), progress=False)
    assert _files(plain) == _files(direct)
    assert all((plain / f).read_bytes() == (direct / f).read_bytes() for f in _files(plain))

    # A refused folder is one clear error line.
    assert main(_synthesize_args(plain, "--layout", "manifest")) == 2
    assert "kdseg synthesize: error:" in capsys.readouterr().err


def test_cli_choices_match_the_module() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["synthesize"]
    options = {a.dest: a for a in sub._actions}
    assert tuple(options["layout"].choices) == LAYOUTS and options["layout"].default == "brats"
    assert tuple(options["orientation"].choices) == ORIENTATIONS
    assert options["orientation"].default == "native" and options["anisotropic"].default is False
    with pytest.raises(SystemExit):
        parser.parse_args(["synthesize", "--out", "x", "--layout", "nnunet"])


def test_module_constants() -> None:
    assert LAYOUTS == ("brats", "brats2023", "msd", "manifest", "unpaired")
    assert set(MIXED_CYCLE) < set(ORIENTATIONS) and "mixed" in ORIENTATIONS
    assert layouts.layout_case_id("msd", 0) == "BRATS_001"
    assert layouts.layout_case_id("brats2023", 12) == "BraTS-GLI-00012-000"
