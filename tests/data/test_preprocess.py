"""Tests for kdseg.data.preprocess: reorientation, crop, z-score, dataset writing, exact restore."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdseg.data import preprocess as pp
from kdseg.data.geometry import (
    CaseGeometry,
    brain_bbox,
    from_canonical,
    restore_prediction,
    to_canonical,
)
from kdseg.data.io import DataError, LoadedCase
from kdseg.data.labels import BRATS_LEGACY
from kdseg.data.preprocess import (
    load_preprocessed,
    preprocess_case,
    preprocess_dataset,
    zscore_in_mask,
)

MODS = ("t1", "flair")
SHAPE = (9, 8, 7)
# BraTS files are LPS; anisotropic 1 x 1.5 x 3 mm spacing to catch swapped zooms.
LPS_ANISO = np.array([[-1.0, 0, 0, 90], [0, -1.5, 0, 120], [0, 0, 3.0, -70], [0, 0, 0, 1]])
# Voxel axes permuted (i -> A, j -> R, k -> I) and flipped.
PERMUTED = np.array([[0, 1.5, 0, -60], [-1.0, 0, 0, 40], [0, 0, -3.0, 30], [0, 0, 0, 1]])


def brain_case(shape=SHAPE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Image (C, X, Y, Z) zero outside an off-centre box "brain"; a label inside it."""
    rng = np.random.default_rng(seed)
    image = np.zeros((len(MODS), *shape), dtype=np.float32)
    image[:, 2:7, 1:6, 2:6] = rng.uniform(1, 100, size=(len(MODS), 5, 5, 4))
    label = np.zeros(shape, dtype=np.uint8)
    label[3:5, 2:4, 3:5] = 2
    label[3, 2, 3], label[4, 3, 4], label[4, 2, 3] = 1, 4, 4
    return image, label


def write_case(root: Path, case_id: str, affine: np.ndarray, seed: int = 0) -> np.ndarray:
    """Write a BraTS-layout case; returns the label array as written."""
    image, label = brain_case(seed=seed)
    folder = root / case_id
    folder.mkdir(parents=True)
    for channel, mod in enumerate(MODS):
        nib.save(nib.Nifti1Image(image[channel], affine), folder / f"{case_id}_{mod}.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), folder / f"{case_id}_seg.nii.gz")
    return label


def world(affine: np.ndarray, ijk) -> np.ndarray:
    return nib.affines.apply_affine(affine, np.asarray(ijk, dtype=float))


# ------------------------------------------------------------------------------- to_canonical


@pytest.mark.parametrize(
    "affine",
    [np.diag([-1.0, -1.0, 1.0, 1.0]), np.eye(4), LPS_ANISO, PERMUTED],
    ids=["LPS", "RAS", "LPS-aniso", "permuted"],
)
def test_to_canonical_matches_nibabel_and_preserves_world_coordinates(affine) -> None:
    data = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)  # unique values

    canonical, canonical_affine = to_canonical(data, affine)

    reference = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    np.testing.assert_array_equal(canonical, np.asarray(reference.dataobj))
    np.testing.assert_allclose(canonical_affine, reference.affine)
    rotation = canonical_affine[:3, :3]
    np.testing.assert_array_equal(rotation, np.diag(np.diag(rotation)))
    assert (np.diag(rotation) > 0).all()
    for ijk in [(0, 0, 0), (2, 5, 6), (8, 7, 6)]:
        (new_ijk,) = np.argwhere(canonical == data[ijk])
        np.testing.assert_allclose(world(canonical_affine, new_ijk), world(affine, ijk))


def test_to_canonical_channel_first_and_inverse() -> None:
    image, _ = brain_case()
    canonical, _ = to_canonical(image, PERMUTED)
    for channel in range(image.shape[0]):
        np.testing.assert_array_equal(canonical[channel], to_canonical(image[channel], PERMUTED)[0])
    np.testing.assert_array_equal(from_canonical(canonical, PERMUTED), image)


# ------------------------------------------------------------------------------- bbox, z-score


def test_brain_bbox_golden() -> None:
    image = np.zeros((2, 10, 6, 5))
    image[0, 3, 2, 1] = 1.0
    image[1, 5, 4, 1] = -2.0  # negative intensities count as brain too
    assert brain_bbox(image) == ((3, 6), (2, 5), (1, 2))
    assert brain_bbox(image, margin=2) == ((1, 8), (0, 6), (0, 4))
    assert brain_bbox(image[0], margin=1) == ((2, 5), (1, 4), (0, 3))


def test_brain_bbox_empty_and_bad_margin() -> None:
    with pytest.raises(ValueError, match="no nonzero voxels"):
        brain_bbox(np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="margin"):
        brain_bbox(np.ones((3, 3, 3)), margin=-1)


def test_zscore_golden() -> None:
    image = np.zeros((2, 2, 2, 1), dtype=np.float32)
    image[0, :, :, 0] = [[1, 2], [3, 9]]
    image[1, :, :, 0] = [[5, 5], [5, 9]]
    mask = np.zeros((2, 2, 1), dtype=bool)
    mask[0, 0, 0] = mask[0, 1, 0] = mask[1, 0, 0] = True  # values 1, 2, 3 and 5, 5, 5

    out, stats = zscore_in_mask(image, mask)

    s = math.sqrt(2 / 3)  # population std of (1, 2, 3)
    assert stats[0] == pytest.approx((2.0, s))
    assert stats[1] == pytest.approx((5.0, 1e-8))  # constant channel: std floor, no NaN
    np.testing.assert_allclose(out[0, :, :, 0], [[-1 / s, 0], [1 / s, 0]], rtol=1e-6)
    np.testing.assert_array_equal(out[1], 0.0)
    assert out.dtype == np.float32


def _zscore_reference(image: np.ndarray, mask: np.ndarray):
    """The plain formula zscore_in_mask must reproduce bit for bit (its first version)."""
    out = np.zeros(image.shape, dtype=np.float32)
    stats = []
    for channel, values in enumerate(image):
        inside = values[mask].astype(np.float64)
        mean = float(inside.mean())
        std = max(float(inside.std()), 1e-8)
        out[channel][mask] = (inside - mean) / std
        stats.append((mean, std))
    return out, stats


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
@pytest.mark.parametrize("fraction", [0.02, 0.5, 1.0])
def test_zscore_bit_identical_to_plain_formula(dtype, fraction: float) -> None:
    rng = np.random.default_rng(7)
    # > 8192 mask voxels per channel: numpy's pairwise summation works in blocks of that size
    full = (rng.normal(300, 80, (3, 41, 37, 29)) * rng.uniform(0.5, 2, (3, 1, 1, 1)))
    full[2] = 4  # a constant channel: the std floor
    image = full.astype(dtype)[:, 3:38, 2:35, 1:]  # non-contiguous, like the crop of a case
    mask = rng.random(image.shape[1:]) < fraction
    out, stats = zscore_in_mask(image, mask)
    ref_out, ref_stats = _zscore_reference(image, mask)
    assert stats == ref_stats  # exact floats, not approx
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, ref_out)


def test_zscore_rejects_empty_mask_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match="empty"):
        zscore_in_mask(np.ones((1, 2, 2, 2)), np.zeros((2, 2, 2), bool))
    with pytest.raises(ValueError, match="expected image"):
        zscore_in_mask(np.ones((1, 2, 2, 2)), np.ones((2, 2, 3), bool))


# ------------------------------------------------------------------------------- one case


def loaded(affine: np.ndarray, image=None, label=None) -> LoadedCase:
    default_image, default_label = brain_case()
    return LoadedCase(
        case_id="c1",
        image=default_image if image is None else image,
        label=default_label if label is None else label,
        affine=affine,
        modalities=MODS,
    )


def test_preprocess_case_crops_to_brain_and_maps_labels() -> None:
    case = loaded(np.eye(4))  # RAS: canonical grid = file grid

    image, classes, geometry, stats = preprocess_case(case, BRATS_LEGACY, margin=1)

    assert geometry.bbox == ((1, 8), (0, 7), (1, 7))
    assert image.shape == (2, 7, 7, 6) and image.dtype == np.float32
    assert classes is not None and classes.shape == (7, 7, 6) and classes.dtype == np.uint8
    assert sorted(np.unique(classes).tolist()) == [0, 1, 2, 3]  # label 4 -> class 3
    brain = case.image[0, 2:7, 1:6, 2:6]
    assert stats[0] == pytest.approx((brain.mean(), brain.std()), rel=1e-5)
    assert image[:, 0].max() == 0  # margin voxels are outside the mask


def test_label_outside_brain_widens_crop() -> None:
    _, label = brain_case()
    label[0, 0, 0] = 2  # labelled voxel where every modality is zero
    case = loaded(LPS_ANISO, label=label)

    _, classes, geometry, _ = preprocess_case(case, BRATS_LEGACY, margin=0)

    restored = restore_prediction(classes, geometry, BRATS_LEGACY)
    np.testing.assert_array_equal(np.asarray(restored.dataobj), label)


@settings(max_examples=40, deadline=None)
@given(
    perm=st.permutations([0, 1, 2]),
    flips=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    zooms=st.tuples(*[st.sampled_from([0.8, 1.0, 1.5, 3.0])] * 3),
    margin=st.integers(0, 3),
    seed=st.integers(0, 1000),
)
def test_restore_inverts_preprocess_for_any_axis_orientation(perm, flips, zooms, margin, seed):
    affine = np.eye(4)
    affine[:3, :3] = 0
    for voxel_axis, world_axis in enumerate(perm):
        sign = -1.0 if flips[voxel_axis] else 1.0
        affine[world_axis, voxel_axis] = sign * zooms[voxel_axis]
    affine[:3, 3] = [10.0, -20.0, 5.0]
    image, label = brain_case(seed=seed)
    rng = np.random.default_rng(seed)
    label[2:7, 1:6, 2:6] = rng.choice(np.array([0, 1, 2, 4], np.uint8), size=(5, 5, 4))

    _, classes, geometry, _ = preprocess_case(loaded(affine, image, label), BRATS_LEGACY, margin)
    restored = restore_prediction(classes, geometry, BRATS_LEGACY)

    np.testing.assert_array_equal(np.asarray(restored.dataobj), label)
    np.testing.assert_allclose(restored.affine, affine)
    assert sorted(geometry.spacing) == pytest.approx(sorted(zooms))


def test_restore_rejects_wrong_shape_and_class_ids() -> None:
    _, classes, geometry, _ = preprocess_case(loaded(LPS_ANISO), BRATS_LEGACY)
    with pytest.raises(DataError,
                       match=r"c1: prediction shape .* differs from the preprocessed array"):
        restore_prediction(classes[:-1], geometry, BRATS_LEGACY)
    with pytest.raises(DataError, match=r"outside 0\.\.3"):
        restore_prediction(classes + 4, geometry, BRATS_LEGACY)
    with pytest.raises(DataError, match="integer class ids"):
        restore_prediction(classes.astype(np.float32), geometry, BRATS_LEGACY)


def test_geometry_dict_round_trip_through_json() -> None:
    _, _, geometry, _ = preprocess_case(loaded(PERMUTED), BRATS_LEGACY)
    again = CaseGeometry.from_dict(json.loads(json.dumps({**geometry.to_dict(), "extra": 1})))
    assert again == geometry
    broken = geometry.to_dict()
    del broken["bbox"]
    with pytest.raises(DataError, match=r"case.json: geometry record lacks keys \['bbox'\]"):
        CaseGeometry.from_dict(broken, source="case.json")


# ------------------------------------------------------------------------------- dataset


@pytest.mark.parametrize("affine", [LPS_ANISO, PERMUTED], ids=["LPS-aniso", "permuted"])
def test_dataset_round_trip_restores_original_label_file(tmp_path: Path, affine) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_case(raw, "c1", affine)
    seg_path = raw / "c1" / "c1_seg.nii.gz"

    preprocess_dataset(raw, out, MODS, BRATS_LEGACY, progress=False)
    _, classes, record = load_preprocessed(out, "c1")
    restored = restore_prediction(np.asarray(classes), CaseGeometry.from_dict(record), BRATS_LEGACY)
    nib.save(restored, tmp_path / "pred.nii.gz")

    original = nib.load(seg_path)
    reloaded = nib.load(tmp_path / "pred.nii.gz")
    np.testing.assert_array_equal(np.asarray(reloaded.dataobj), np.asarray(original.dataobj))
    np.testing.assert_allclose(reloaded.affine, original.affine)
    assert reloaded.shape == original.shape
    assert reloaded.get_data_dtype() == np.uint8
    np.testing.assert_allclose(reloaded.header.get_zooms(), original.header.get_zooms())
    np.testing.assert_allclose(reloaded.get_qform(), original.affine, atol=1e-6)  # quaternion


def test_dataset_outputs_manifest_and_fingerprint(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    labels = [write_case(raw, f"c{i}", LPS_ANISO, seed=i) for i in (2, 1)]

    manifest = preprocess_dataset(raw, out, MODS, BRATS_LEGACY, margin=0, progress=False)

    assert manifest["case"].tolist() == ["c1", "c2"]
    assert manifest.loc[0, ["shape_x", "shape_y", "shape_z"]].tolist() == [5, 5, 4]
    assert manifest.loc[0, ["spacing_x", "spacing_y", "spacing_z"]].tolist() == [1.0, 1.5, 3.0]
    counts = manifest.loc[0, [f"voxels_{n}" for n in BRATS_LEGACY.class_names]].tolist()
    assert counts == [100 - 8, 1, 5, 2] and sum(counts) == 5 * 5 * 4
    assert labels[1].sum() > 0
    on_disk = pd.read_csv(out / "manifest.csv")
    assert on_disk["image"].tolist() == ["c1_image.npy", "c2_image.npy"]

    image, classes, record = load_preprocessed(out, "c1")
    assert isinstance(image, np.memmap) and image.dtype == np.float32
    assert image.shape == (2, 5, 5, 4)
    assert classes is not None and classes.dtype == np.uint8
    assert record["modalities"] == list(MODS) and set(record["zscore"]) == set(MODS)
    assert record["class_voxels"] == counts
    assert set(record["source_files"]) == {"t1", "flair", "seg"}
    assert not isinstance(load_preprocessed(out, "c1", mmap=False)[0], np.memmap)

    fingerprint = json.loads((out / "dataset.json").read_text())
    assert fingerprint["n_cases"] == 2 and fingerprint["label_convention"] == "brats"
    assert fingerprint["median_spacing"] == [1.0, 1.5, 3.0]
    manifest_sha1 = hashlib.sha1((out / "manifest.csv").read_bytes()).hexdigest()
    assert fingerprint["manifest_sha1"] == manifest_sha1
    assert sum(fingerprint["class_voxel_fractions"].values()) == pytest.approx(1.0)
    means = [json.loads((out / f"c{i}.json").read_text())["zscore"]["t1"]["mean"] for i in (1, 2)]
    assert fingerprint["intensity"]["t1"]["mean_of_case_means"] == pytest.approx(np.mean(means))


def test_unlabelled_dataset(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_case(raw, "c1", LPS_ANISO)
    (raw / "c1" / "c1_seg.nii.gz").unlink()

    manifest = preprocess_dataset(raw, out, MODS, BRATS_LEGACY, progress=False, require_label=False)

    assert not (out / "c1_label.npy").exists()
    _, classes, _ = load_preprocessed(out, "c1")
    assert classes is None
    assert manifest.loc[0, "label"] == "" and pd.isna(manifest.loc[0, "voxels_ET"])


def test_validation_reports_all_cases_and_writes_no_manifest(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_case(raw, "c1", LPS_ANISO)
    write_case(raw, "c2", LPS_ANISO)
    write_case(raw, "c3", LPS_ANISO)
    (raw / "c1" / "c1_flair.nii.gz").unlink()
    (raw / "c2" / "c2_t1.nii.gz").write_bytes(b"garbage")
    _, label = brain_case()
    label[0, 0, 0] = 3
    nib.save(nib.Nifti1Image(label, LPS_ANISO), raw / "c3" / "c3_seg.nii.gz")

    with pytest.raises(DataError) as err:
        preprocess_dataset(raw, out, MODS, BRATS_LEGACY, progress=False)

    message = str(err.value)
    assert message.startswith(f"{raw}: 3 data problems in 3 case(s)")
    for text in (
        "c1/c1_flair.nii.gz",
        "missing 'flair' image file",
        "c2/c2_t1.nii.gz",
        "cannot read NIfTI",
        "c3/c3_seg.nii.gz",
        "unexpected label values [3]",
    ):
        assert text in message
    # One pass: nothing downstream can start (no manifest), the problem cases have no outputs.
    assert not (out / "manifest.csv").exists() and not (out / "dataset.json").exists()
    assert not any(out.glob("c*_image.npy"))


def test_resume_skips_up_to_date_cases_and_redoes_changed_ones(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_case(raw, "c1", LPS_ANISO)
    write_case(raw, "c2", LPS_ANISO, seed=5)
    first = preprocess_dataset(raw, out, MODS, BRATS_LEGACY, progress=False)
    outputs = {p.name: p.stat().st_mtime_ns for p in out.glob("c*")}
    # Make a rewrite detectable even on filesystems with coarse timestamps.
    for path in out.glob("c*"):
        os.utime(path, ns=(1, 1))
    touched = raw / "c2" / "c2_t1.nii.gz"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))

    second = preprocess_dataset(raw, out, MODS, BRATS_LEGACY, progress=False)

    pd.testing.assert_frame_equal(first, second)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("c*")}
    assert set(after) == set(outputs)
    assert all(after[name] == 1 for name in after if name.startswith("c1"))  # skipped
    assert all(after[name] != 1 for name in after if name.startswith("c2"))  # redone
    # A different margin invalidates every case.
    preprocess_dataset(raw, out, MODS, BRATS_LEGACY, margin=0, progress=False)
    assert (out / "c1.json").stat().st_mtime_ns != 1


def test_failed_write_leaves_no_partial_or_temp_files(tmp_path: Path, monkeypatch) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_case(raw, "c1", LPS_ANISO)
    real_save = np.save

    def save_then_fail(handle, array, allow_pickle=False):
        real_save(handle, array, allow_pickle=allow_pickle)
        if array.dtype == np.uint8:  # the label: after the image, before the json
            raise OSError("disk full")

    monkeypatch.setattr(pp.np, "save", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        preprocess_dataset(raw, out, MODS, BRATS_LEGACY, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["c1_image.npy"]

    monkeypatch.setattr(pp.np, "save", real_save)
    (out / ".c1.partial-0123456789ab.json").write_text("left by a killed run")
    preprocess_dataset(raw, out, MODS, BRATS_LEGACY, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "c1.json",
        "c1_fg.npy",
        "c1_image.npy",
        "c1_label.npy",
        "dataset.json",
        "manifest.csv",
    ]


def test_load_preprocessed_missing_case(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="preprocessed file not found") as err:
        load_preprocessed(tmp_path, "nope")
    assert str(err.value).startswith(str(tmp_path / "nope.json"))
