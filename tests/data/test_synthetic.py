"""Tests of the built-in synthetic BraTS-like dataset (kdseg.data.synthetic).

Cases are generated on tiny grids (32 x 36 x 32, ~0.05 s each); the MNI template is loaded once
per test session (~3 s, mostly importing nilearn).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from kdseg.data import synthetic
from kdseg.data.synthetic import (
    CONTRAST_TABLE,
    GENERATOR_VERSION,
    MODALITIES,
    TISSUE_CLASSES,
    TUMOUR_CLASSES,
    SyntheticArrays,
    SyntheticDatasetMismatchError,
    SyntheticSpec,
    case_id,
    smooth_noise,
    synthesize_arrays,
    synthesize_case,
    synthesize_dataset,
)

SHAPE = (32, 36, 32)
KEYS = (*MODALITIES, "seg")
FLAIR, T1CE, T2, T1 = (MODALITIES.index(m) for m in ("flair", "t1ce", "t2", "t1"))


@pytest.fixture(scope="module")
def spec() -> SyntheticSpec:
    # All cases enhancing, so every contrast below has all compartments to look at.
    return SyntheticSpec(n_cases=5, shape=SHAPE, seed=7, no_enhancing_fraction=0.0)


@pytest.fixture(scope="module")
def cases(spec: SyntheticSpec) -> list[SyntheticArrays]:
    return [synthesize_arrays(spec, i) for i in range(spec.n_cases)]


def _hidden_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*")]


# --- spec and ids ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"n_cases": 0}, "n_cases"),
        ({"shape": (15, 32, 32)}, "shape"),
        ({"shape": (32, 32)}, "shape"),
        ({"shape": 32}, "shape"),
        ({"shape": (32.0, 32, 32)}, "shape"),
        ({"seed": -1}, "seed"),
        ({"difficulty": -0.1}, "difficulty"),
        ({"difficulty": 1.5}, "difficulty"),
        ({"no_enhancing_fraction": 2}, "no_enhancing_fraction"),
    ],
)
def test_spec_rejects_bad_values_naming_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}:"):
        SyntheticSpec(**changes)


def test_spec_normalises_a_list_shape() -> None:
    from_yaml = SyntheticSpec(shape=[32, 36, 32], difficulty=1)  # type: ignore[arg-type]
    assert from_yaml == SyntheticSpec(shape=(32, 36, 32), difficulty=1.0)
    assert isinstance(from_yaml.shape, tuple) and isinstance(from_yaml.difficulty, float)


def test_case_id() -> None:
    assert case_id(0) == "SYN_0000"
    assert case_id(12) == "SYN_0012"
    with pytest.raises(ValueError, match="-1"):
        case_id(-1)


def test_case_index_outside_the_dataset_is_refused(spec: SyntheticSpec) -> None:
    with pytest.raises(ValueError, match="n_cases"):
        synthesize_arrays(spec, spec.n_cases)


def test_contrast_table_rows_are_the_documented_classes() -> None:
    assert tuple(CONTRAST_TABLE) == TISSUE_CLASSES + TUMOUR_CLASSES
    assert all(len(row) == len(MODALITIES) for row in CONTRAST_TABLE.values())


# --- labels ------------------------------------------------------------------------------------
def test_labels_are_brats_values_with_all_compartments(cases: list[SyntheticArrays]) -> None:
    for case in cases:
        assert case.labels.dtype == np.uint8
        assert set(np.unique(case.labels).tolist()) == {0, 1, 2, 4}


def test_all_compartments_present_in_most_default_cases_on_a_32_cube() -> None:
    spec = SyntheticSpec(n_cases=10, shape=(32, 32, 32), seed=1)  # default 20 % LGG-like
    found = [set(np.unique(synthesize_arrays(spec, i).labels).tolist()) for i in range(10)]
    assert all(f <= {0, 1, 2, 4} and {1, 2} <= f for f in found)
    assert sum(4 in f for f in found) >= 5


def test_no_enhancing_fraction_one_gives_lgg_like_cases() -> None:
    spec = SyntheticSpec(n_cases=3, shape=SHAPE, seed=2, no_enhancing_fraction=1.0)
    for i in range(3):
        assert set(np.unique(synthesize_arrays(spec, i).labels).tolist()) == {0, 1, 2}


def test_edema_lies_in_brain_tissue_mostly_white_matter(cases: list[SyntheticArrays]) -> None:
    for case in cases:
        csf, gm, wm = (fraction[case.labels == 2] for fraction in case.tissue)
        # Tissue fractions are those under the lesion before it was drawn.
        assert wm.mean() > gm.mean()
        assert csf.mean() < 0.1


# --- geometry ----------------------------------------------------------------------------------
def test_geometry_is_brats_like_and_shared_by_all_files(spec: SyntheticSpec) -> None:
    case = synthesize_case(spec, 0)
    assert set(case) == set(KEYS)
    # Golden values by hand: the MNI152 brain mask spans voxels [26, 171) x [27, 208) x [0, 155)
    # of a 1 mm grid with origin (-98, -134, -72); plus a 4 mm margin that is a field of view
    # x in [-76.5, 76.5], y in [-111.5, 77.5], z in [-76.5, 86.5] mm (153 x 189 x 163 mm).
    sx, sy, sz = 153 / 32, 189 / 36, 163 / 32
    expected = np.array(
        [
            [-sx, 0, 0, 76.5 - sx / 2],
            [0, -sy, 0, 77.5 - sy / 2],
            [0, 0, sz, -76.5 + sz / 2],
            [0, 0, 0, 1],
        ]
    )
    for key, image in case.items():
        assert image.shape == SHAPE, key
        np.testing.assert_allclose(image.affine, expected, atol=1e-5, err_msg=key)
        header = image.header
        np.testing.assert_allclose(header.get_zooms(), (sx, sy, sz), rtol=1e-6)
        assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 1
        np.testing.assert_allclose(image.get_qform(), expected, atol=1e-4)
        assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
        assert header.get_data_dtype() == (np.uint8 if key == "seg" else np.int16)


def test_head_fills_the_grid(cases: list[SyntheticArrays]) -> None:
    for case in cases:
        brain = case.images[0] > 0
        for axis in range(3):
            others = tuple(a for a in range(3) if a != axis)
            extent = np.flatnonzero(brain.any(axis=others))
            assert extent[-1] - extent[0] + 1 >= 0.85 * SHAPE[axis]


def test_background_is_exactly_zero_outside_the_brain(cases: list[SyntheticArrays]) -> None:
    for case in cases:
        brain = case.tissue.sum(axis=0) > 0
        assert 0.3 < brain.mean() < 0.8
        assert np.all(case.images[:, ~brain] == 0)
        assert np.all(case.images[:, brain] > 0)  # Rician magnitude never rounds to 0 inside
        assert np.all(case.labels[~brain] == 0)
        np.testing.assert_allclose(case.tissue.sum(axis=0)[brain], 1.0, atol=1e-5)


# --- determinism -------------------------------------------------------------------------------
def test_same_seed_same_case_and_independent_of_n_cases(spec: SyntheticSpec) -> None:
    a = synthesize_arrays(replace(spec, n_cases=2), 1)
    b = synthesize_arrays(replace(spec, n_cases=5), 1)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_different_seed_or_index_gives_a_different_case(
    spec: SyntheticSpec, cases: list[SyntheticArrays]
) -> None:
    other_seed = synthesize_arrays(replace(spec, seed=spec.seed + 1), 0)
    assert not np.array_equal(other_seed.labels, cases[0].labels)
    assert not np.array_equal(other_seed.images, cases[0].images)
    assert not np.array_equal(cases[1].labels, cases[0].labels)


# --- intensities -------------------------------------------------------------------------------
def _region_means(case: SyntheticArrays) -> dict[str, np.ndarray]:
    """Mean intensity per modality, shape (4,), of lesion compartments and pure normal tissue."""
    normal = case.labels == 0
    regions = {
        "edema": case.labels == 2,
        "enhancing": case.labels == 4,
        "core": case.labels == 1,
        "wm": normal & (case.tissue[2] > 0.9),
        "csf": normal & (case.tissue[0] > 0.7),
    }
    assert all(mask.sum() >= 3 for mask in regions.values()), {
        k: int(v.sum()) for k, v in regions.items()
    }
    return {name: case.images[:, mask].mean(axis=1) for name, mask in regions.items()}


def test_modalities_carry_their_documented_contrasts(cases: list[SyntheticArrays]) -> None:
    for case in cases:
        m = _region_means(case)
        # Margins hold at difficulty 0.5 on this coarse (~5 mm) grid, where partial volume and
        # blur already eat much of the table's contrast (e.g. T1ce rim/core 3.8 -> ~1.5).
        flair_edema = m["edema"][FLAIR] / m["wm"][FLAIR]
        assert flair_edema > 1.4
        assert m["enhancing"][T1CE] > 1.2 * m["core"][T1CE]
        assert m["enhancing"][T1CE] > 1.15 * m["wm"][T1CE]
        t1_edema = m["edema"][T1] / m["wm"][T1]
        assert abs(t1_edema - 1) < abs(flair_edema - 1) / 2
        # CSF: bright on T2 (a confounder for edema), suppressed on FLAIR.
        assert m["csf"][T2] > 1.5 * m["wm"][T2]
        assert m["csf"][FLAIR] < 0.8 * m["wm"][FLAIR]


def test_contrast_check_fails_when_the_table_hides_edema(
    spec: SyntheticSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The FLAIR check above measures the table: with edema = WM on FLAIR it would fail."""
    flair_col = MODALITIES.index("flair")
    edema = list(CONTRAST_TABLE["edema"])
    edema[flair_col] = CONTRAST_TABLE["wm"][flair_col]
    monkeypatch.setitem(CONTRAST_TABLE, "edema", tuple(edema))
    m = _region_means(synthesize_arrays(spec, 0))
    assert m["edema"][FLAIR] / m["wm"][FLAIR] < 1.25


def test_difficulty_lowers_contrast_and_raises_noise(spec: SyntheticSpec) -> None:
    easy, hard = (synthesize_arrays(replace(spec, difficulty=d), 0) for d in (0.0, 1.0))

    def flair_contrast_and_wm_noise(case: SyntheticArrays) -> tuple[float, float]:
        m = _region_means(case)
        wm = case.images[FLAIR][(case.labels == 0) & (case.tissue[2] > 0.9)]
        return m["edema"][FLAIR] / m["wm"][FLAIR], wm.std() / wm.mean()

    easy_contrast, easy_noise = flair_contrast_and_wm_noise(easy)
    hard_contrast, hard_noise = flair_contrast_and_wm_noise(hard)
    assert easy_contrast > hard_contrast + 0.2
    assert hard_noise > 1.5 * easy_noise


# --- smooth fields -----------------------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(
    n_control=st.tuples(*[st.integers(3, 6)] * 3),
    shape=st.tuples(*[st.integers(8, 20)] * 3),
    seed=st.integers(0, 2**16),
)
def test_smooth_noise_is_a_cubic_spline_zoom_of_control_noise(
    n_control: tuple[int, int, int], shape: tuple[int, int, int], seed: int
) -> None:
    fields = smooth_noise(np.random.default_rng(seed), shape, n_control, 2)
    assert fields.shape == (2, *shape) and fields.dtype == np.float32
    np.testing.assert_allclose(fields.mean(axis=(1, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(fields.std(axis=(1, 2, 3)), 1, atol=1e-3)
    # Same draws through scipy's own 3-D zoom, normalised the same way.
    coeffs = np.random.default_rng(seed).standard_normal((2, *n_control), dtype=np.float32)
    zoom = [s / c for s, c in zip(shape, n_control, strict=True)]
    for field, coeff in zip(fields, coeffs, strict=True):
        reference = ndimage.zoom(
            coeff.astype(np.float64), zoom, order=3, mode="mirror", grid_mode=True
        )
        reference = (reference - reference.mean()) / reference.std()
        np.testing.assert_allclose(field, reference, atol=2e-3)


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    index=st.integers(0, 3),
    # Two grids only: each new grid costs ~0.4 s of template smoothing (cached per grid).
    shape=st.sampled_from([SHAPE, (16, 20, 18)]),
    difficulty=st.floats(0, 1),
    fraction=st.floats(0, 1),
)
def test_any_spec_gives_valid_labels_and_skull_stripped_images(
    seed: int, index: int, shape: tuple[int, int, int], difficulty: float, fraction: float
) -> None:
    spec = SyntheticSpec(
        n_cases=4, shape=shape, seed=seed, difficulty=difficulty, no_enhancing_fraction=fraction
    )
    case = synthesize_arrays(spec, index)
    brain = case.tissue.sum(axis=0) > 0
    assert case.images.shape == (4, *shape) and case.labels.shape == shape
    assert set(np.unique(case.labels).tolist()) <= {0, 1, 2, 4}
    assert np.any(case.labels > 0)
    assert np.all(case.images[:, ~brain] == 0) and np.all(case.labels[~brain] == 0)


# --- writing the dataset -----------------------------------------------------------------------
@pytest.fixture
def small_spec() -> SyntheticSpec:
    return SyntheticSpec(n_cases=2, shape=SHAPE, seed=3)


def _paths(root: Path, n: int) -> list[Path]:
    return [root / case_id(i) / f"{case_id(i)}_{k}.nii.gz" for i in range(n) for k in KEYS]


def test_dataset_is_written_in_brats_layout(
    tmp_path: Path, small_spec: SyntheticSpec, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "raw"
    assert synthesize_dataset(out, small_spec, progress=False) == ["SYN_0000", "SYN_0001"]
    assert capsys.readouterr().err == ""
    assert all(p.is_file() for p in _paths(out, 2))
    assert sorted(p.name for p in out.iterdir()) == ["SYN_0000", "SYN_0001", "synthetic.json"]
    assert _hidden_files(out) == []
    manifest = json.loads((out / "synthetic.json").read_text())
    assert manifest["generator_version"] == GENERATOR_VERSION
    assert manifest["complete"] is True
    assert SyntheticSpec(**manifest["spec"]) == small_spec
    # Files round-trip to the in-memory case exactly.
    expected = synthesize_arrays(small_spec, 1)
    for k, key in enumerate(KEYS):
        stored = np.asarray(nib.load(out / "SYN_0001" / f"SYN_0001_{key}.nii.gz").dataobj)
        np.testing.assert_array_equal(
            stored, expected.labels if key == "seg" else expected.images[k]
        )


def test_progress_bar_goes_to_stderr(
    tmp_path: Path, small_spec: SyntheticSpec, capsys: pytest.CaptureFixture[str]
) -> None:
    synthesize_dataset(tmp_path / "raw", replace(small_spec, n_cases=1), progress=True)
    captured = capsys.readouterr()
    assert "synthetic cases" in captured.err and captured.out == ""


def test_resume_skips_complete_cases_and_redoes_incomplete_ones(
    tmp_path: Path, small_spec: SyntheticSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "raw"
    synthesize_dataset(out, small_spec, progress=False)
    first = {p: p.stat().st_mtime_ns for p in _paths(out, 2)}
    before = (out / "SYN_0001" / "SYN_0001_t2.nii.gz").read_bytes()
    (out / "SYN_0001" / "SYN_0001_t2.nii.gz").unlink()

    generated: list[int] = []
    real = synthetic.synthesize_case

    def counting(spec: SyntheticSpec, index: int) -> dict[str, nib.Nifti1Image]:
        generated.append(index)
        return real(spec, index)

    monkeypatch.setattr(synthetic, "synthesize_case", counting)
    synthesize_dataset(out, small_spec, progress=False)
    assert generated == [1]
    assert all(first[p] == p.stat().st_mtime_ns for p in _paths(out, 1))
    assert (out / "SYN_0001" / "SYN_0001_t2.nii.gz").read_bytes() == before

    synthesize_dataset(out, small_spec, progress=False)
    assert generated == [1]  # nothing left to do


def test_other_settings_in_the_folder_are_refused(
    tmp_path: Path, small_spec: SyntheticSpec
) -> None:
    out = tmp_path / "raw"
    synthesize_dataset(out, small_spec, progress=False)
    manifest = (out / "synthetic.json").read_text()
    with pytest.raises(SyntheticDatasetMismatchError, match=r"other settings.*seed: 3 there, 4"):
        synthesize_dataset(out, replace(small_spec, seed=4), progress=False)
    with pytest.raises(SyntheticDatasetMismatchError, match="n_cases"):
        synthesize_dataset(out, replace(small_spec, n_cases=3), progress=False)
    assert (out / "synthetic.json").read_text() == manifest
    assert not (out / "SYN_0002").exists()


def test_foreign_or_broken_folders_are_refused(tmp_path: Path, small_spec: SyntheticSpec) -> None:
    foreign = tmp_path / "brats"
    (foreign / "BraTS_001").mkdir(parents=True)
    with pytest.raises(SyntheticDatasetMismatchError, match="not a synthetic dataset folder"):
        synthesize_dataset(foreign, small_spec, progress=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["BraTS_001"]

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "synthetic.json").write_text("{not json")
    with pytest.raises(SyntheticDatasetMismatchError, match=r"synthetic\.json: unreadable"):
        synthesize_dataset(broken, small_spec, progress=False)


def test_interrupted_write_leaves_no_partial_file(
    tmp_path: Path, small_spec: SyntheticSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "raw"
    real_save = nib.save
    calls: list[Path] = []

    def crash_on_third_file(image: nib.Nifti1Image, filename: Path) -> None:
        calls.append(Path(filename))
        if len(calls) == 3:
            Path(filename).write_bytes(b"\x1f\x8b truncated")  # half-written gzip, then die
            raise KeyboardInterrupt
        real_save(image, filename)

    monkeypatch.setattr(nib, "save", crash_on_third_file)
    with pytest.raises(KeyboardInterrupt):
        synthesize_dataset(out, small_spec, progress=False)
    case_dir = out / "SYN_0000"
    assert sorted(p.name for p in case_dir.iterdir()) == [
        "SYN_0000_t1.nii.gz",
        "SYN_0000_t1ce.nii.gz",
    ]
    assert all(c.parent == case_dir and c.name.startswith(".") for c in calls)
    assert json.loads((out / "synthetic.json").read_text())["complete"] is False

    # A stale temporary file from a killed process is cleaned up by the next run.
    (case_dir / ".SYN_0000_t2.partial-0123456789ab.nii.gz").write_bytes(b"junk")
    monkeypatch.setattr(nib, "save", real_save)
    synthesize_dataset(out, small_spec, progress=False)
    assert _hidden_files(out) == []
    assert all(p.is_file() for p in _paths(out, 2))
    for path in _paths(out, 2):
        nib.load(path).get_fdata()  # every file is a complete, readable NIfTI
    assert json.loads((out / "synthetic.json").read_text())["complete"] is True
