"""Resampling to a target spacing and back (kdseg.data.resample)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy import ndimage

from kdseg.data.resample import resample_image, resample_labels, resample_mask, target_shape

RNG = np.random.default_rng(0)


def _sphere(shape: tuple[int, int, int], radius: float, spacing: float = 1.0) -> np.ndarray:
    """Bool ball of ``radius`` mm centred in a grid of isotropic ``spacing`` mm."""
    axes = [(np.arange(n) + 0.5) * spacing - n * spacing / 2 for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    return x**2 + y**2 + z**2 <= radius**2


# ---------------------------------------------------------------------------------------------
# target_shape
# ---------------------------------------------------------------------------------------------


def test_target_shape_examples() -> None:
    assert target_shape((240, 240, 155), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)) == (240, 240, 155)
    assert target_shape((100, 50, 30), (0.5, 2.0, 1.0), (1.0, 1.0, 4.0)) == (50, 100, 8)
    assert target_shape((10, 10, 10), (1.0, 1.0, 1.0), (2.0, 3.0, 40.0)) == (5, 3, 1)  # >= 1
    assert target_shape(np.array([7, 8, 9]), np.array([1.2, 1, 1]), [0.6, 1, 1]) == (14, 8, 9)


@pytest.mark.parametrize(
    ("shape", "spacing", "target", "match"),
    [
        ((10, 10), (1, 1, 1), (1, 1, 1), "shape"),
        ((10, 0, 10), (1, 1, 1), (1, 1, 1), "shape"),
        ((10, 10.5, 10), (1, 1, 1), (1, 1, 1), "shape"),
        ((10, 10, 10), (1, 0, 1), (1, 1, 1), "spacing"),
        ((10, 10, 10), (1, -1, 1), (1, 1, 1), "spacing"),
        ((10, 10, 10), (1, 1, 1), (1, float("nan"), 1), "target_spacing"),
        ((10, 10, 10), (1, 1, 1), (1, float("inf"), 1), "target_spacing"),
        ((10, 10, 10), (1, 1, 1), (1, 1), "target_spacing"),
    ],
)
def test_target_shape_rejects_bad_input(shape, spacing, target, match) -> None:
    with pytest.raises(ValueError, match=match):
        target_shape(shape, spacing, target)


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize("out_shape", [(20, 9, 13), (7, 30, 5), (11, 13, 13)])
def test_image_shape_dtype(order: int, out_shape: tuple[int, int, int]) -> None:
    image = RNG.standard_normal((2, 11, 13, 13)).astype(np.float32)
    out = resample_image(image, out_shape, order)
    assert out.shape == (2, *out_shape)
    assert out.dtype == np.float32


@pytest.mark.parametrize("order", [1, 3])
def test_image_identity_is_an_unchanged_copy(order: int) -> None:
    image = RNG.standard_normal((3, 6, 7, 8)).astype(np.float32)
    out = resample_image(image, (6, 7, 8), order)
    np.testing.assert_array_equal(out, image)
    assert out is not image and not np.shares_memory(out, image)
    as_float32 = resample_image(image.astype(np.float64), (6, 7, 8), order)
    assert as_float32.dtype == np.float32


@pytest.mark.parametrize("order", [1, 3])
def test_constant_image_stays_constant(order: int) -> None:
    image = np.full((2, 9, 10, 11), 3.5, dtype=np.float32)
    image[1] = -2.0
    out = resample_image(image, (17, 4, 23), order)
    np.testing.assert_allclose(out[0], 3.5, rtol=1e-6)
    np.testing.assert_allclose(out[1], -2.0, rtol=1e-6)


def test_linear_ramp_golden_values() -> None:
    # 4 -> 8: output centre o samples x_in = (o + 0.5) / 2 - 0.5 = o / 2 - 0.25, clamped to the
    # edge voxels outside [0, 3].
    ramp = np.arange(4, dtype=np.float32).reshape(1, 4, 1, 1)
    up = resample_image(ramp, (8, 1, 1), order=1).ravel()
    np.testing.assert_allclose(up, [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3], atol=1e-6)
    # 8 -> 4: x_in = (o + 0.5) * 2 - 0.5 = 2 o + 0.5, the mean of each voxel pair.
    ramp8 = np.arange(8, dtype=np.float32).reshape(1, 1, 8, 1)
    down = resample_image(ramp8, (1, 4, 1), order=1).ravel()
    np.testing.assert_allclose(down, [0.5, 2.5, 4.5, 6.5], atol=1e-6)


@pytest.mark.parametrize("order", [1, 3])
def test_image_matches_explicit_voxel_centre_mapping(order: int) -> None:
    """Independent check of the grid convention with map_coordinates at every output voxel."""
    channel = RNG.standard_normal((9, 12, 7))
    out_shape = (13, 5, 7)
    centres = [
        (np.arange(o) + 0.5) * i / o - 0.5 for i, o in zip(channel.shape, out_shape, strict=True)
    ]
    coords = np.meshgrid(*centres, indexing="ij")
    expected = ndimage.map_coordinates(channel, coords, order=order, mode="nearest")
    out = resample_image(channel[None].astype(np.float32), out_shape, order)[0]
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_cubic_matches_scipy_zoom() -> None:
    image = RNG.standard_normal((1, 16, 21, 10)).astype(np.float32)
    out_shape = (25, 14, 10)
    zoom = [o / i for o, i in zip(out_shape, image.shape[1:], strict=True)]
    expected = ndimage.zoom(image[0], zoom, order=3, mode="nearest", grid_mode=True)
    np.testing.assert_allclose(resample_image(image, out_shape, 3)[0], expected, atol=1e-5)


def test_cubic_memory_stays_near_two_channels() -> None:
    image = RNG.standard_normal((2, 96, 96, 96)).astype(np.float32)
    out_shape = (80, 100, 90)
    channel_bytes = image[0].nbytes
    output_bytes = 2 * np.prod(out_shape) * 4
    tracemalloc.start()
    try:
        resample_image(image, out_shape, 3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Padded float32 coefficients: (96 + 24)^3 / 96^3 = 1.95 channels; scipy's zoom would
    # need ~4.7 (float64 coefficients of the padded channel next to the padded copy).
    assert (peak - output_bytes) / channel_bytes < 2.5


@pytest.mark.parametrize(
    ("image", "out_shape", "order", "match"),
    [
        (np.zeros((4, 4, 4), np.float32), (4, 4, 4), 1, "image"),
        (np.zeros((1, 4, 4, 4), np.complex64), (4, 4, 4), 1, "image"),
        (np.zeros((1, 4, 4, 4), np.float32), (4, 0, 4), 1, "out_shape"),
        (np.zeros((1, 4, 4, 4), np.float32), (4, 4), 1, "out_shape"),
        (np.zeros((1, 4, 4, 4), np.float32), (5, 4, 4), 2, "order"),
        (np.zeros((1, 4, 4, 4), np.float32), (5, 4, 4), 0, "order"),
    ],
)
def test_image_rejects_bad_input(image, out_shape, order, match) -> None:
    with pytest.raises(ValueError, match=match):
        resample_image(image, out_shape, order)


# ---------------------------------------------------------------------------------------------
# Masks and labels
# ---------------------------------------------------------------------------------------------


def test_mask_nearest() -> None:
    mask = RNG.random((6, 7, 5)) > 0.5
    out = resample_mask(mask, (12, 14, 5))
    assert out.dtype == np.bool_ and out.shape == (12, 14, 5)
    np.testing.assert_array_equal(out, mask.repeat(2, axis=0).repeat(2, axis=1))
    np.testing.assert_array_equal(resample_mask(out, mask.shape), mask)
    same = resample_mask(mask, mask.shape)
    np.testing.assert_array_equal(same, mask)
    assert not np.shares_memory(same, mask)
    with pytest.raises(ValueError, match="bool"):
        resample_mask(mask.astype(np.uint8), (3, 3, 3))
    with pytest.raises(ValueError, match="mask"):
        resample_mask(mask[0], (3, 3, 3))


@pytest.mark.parametrize("factors", [(2, 3, 1), (3, 1, 2), (4, 4, 4)])
def test_nearest_labels_round_trip_is_exact(factors: tuple[int, int, int]) -> None:
    labels = RNG.integers(0, 4, size=(5, 6, 7)).astype(np.int64)
    up_shape = tuple(n * f for n, f in zip(labels.shape, factors, strict=True))
    up = resample_labels(labels, up_shape, "nearest", 4)
    assert up.dtype == np.uint8 and up.shape == up_shape
    expected = labels
    for axis, f in enumerate(factors):
        expected = expected.repeat(f, axis=axis)
    np.testing.assert_array_equal(up, expected)
    np.testing.assert_array_equal(resample_labels(up, labels.shape, "nearest", 4), labels)


@pytest.mark.parametrize("out_shape", [(26, 26, 26), (61, 61, 61)])
def test_linear_labels_keep_sphere_volumes(out_shape: tuple[int, int, int]) -> None:
    """Two nested balls (class 2 inside class 1) resampled from a 40^3 grid of 1 mm voxels:
    the volume of each class, in mm^3, changes by less than a few percent."""
    labels = _sphere((40, 40, 40), 14.0).astype(np.uint8) + _sphere((40, 40, 40), 8.0)
    voxel_mm3 = (40 / out_shape[0]) ** 3
    out = resample_labels(labels, out_shape, "linear", 3)
    assert out.dtype == np.uint8 and out.shape == out_shape
    for c in (1, 2):
        before = np.count_nonzero(labels == c)
        after = np.count_nonzero(out == c) * voxel_mm3
        assert after == pytest.approx(before, rel=0.04), c
    # ... and the result is still a ball: the class-2 region is where the 8 mm ball lands.
    ideal = _sphere(out_shape, 8.0, spacing=40 / out_shape[0])
    assert np.count_nonzero((out == 2) != ideal) < 0.1 * np.count_nonzero(ideal)


def test_linear_labels_stay_in_range_and_skip_absent_classes() -> None:
    labels = RNG.choice(np.array([0, 2, 4]), size=(9, 8, 7)).astype(np.uint8)
    out = resample_labels(labels, (13, 5, 11), "linear", 6)
    assert set(np.unique(out)) <= {0, 2, 4}
    noisy = RNG.integers(0, 5, size=(8, 9, 10))
    for method in ("nearest", "linear"):
        out = resample_labels(noisy, (15, 4, 21), method, 5)
        assert out.min() >= 0 and out.max() <= 4


def test_linear_labels_ties_go_to_the_lower_class() -> None:
    # 2 -> 3 voxels: the middle output voxel lies exactly between the two input voxels.
    for values, expected in (([0, 1], [0, 0, 1]), ([1, 0], [1, 0, 0]), ([2, 1], [2, 1, 1])):
        labels = np.array(values, np.uint8).reshape(2, 1, 1)
        np.testing.assert_array_equal(
            resample_labels(labels, (3, 1, 1), "linear", 3).ravel(), expected
        )


def test_labels_single_class_and_identity() -> None:
    labels = np.full((4, 5, 6), 2, dtype=np.int32)
    np.testing.assert_array_equal(resample_labels(labels, (7, 3, 2), "linear", 3), 2)
    same = resample_labels(labels, labels.shape, "linear", 3)
    assert same.dtype == np.uint8
    np.testing.assert_array_equal(same, labels)


@pytest.mark.parametrize(
    ("labels", "method", "num_classes", "match"),
    [
        (np.full((3, 3, 3), 3), "linear", 3, "class ids"),
        (np.full((3, 3, 3), -1), "nearest", 3, "class ids"),
        (np.zeros((3, 3, 3), np.float32), "linear", 3, "integer"),
        (np.zeros((3, 3)), "linear", 3, "labels"),
        (np.zeros((3, 3, 3), np.uint8), "cubic", 3, "method"),
        (np.zeros((3, 3, 3), np.uint8), "linear", 0, "num_classes"),
        (np.zeros((3, 3, 3), np.uint8), "linear", 257, "num_classes"),
        (np.zeros((3, 3, 3), np.uint8), "linear", 2.0, "num_classes"),
    ],
)
def test_labels_reject_bad_input(labels, method, num_classes, match) -> None:
    with pytest.raises(ValueError, match=match):
        resample_labels(labels, (4, 4, 4), method, num_classes)
