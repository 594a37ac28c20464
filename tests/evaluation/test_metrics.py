"""Tests for kdseg.evaluation.metrics: golden values worked out by hand, plus property tests."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kdseg.data.labels import BRATS_LEGACY
from kdseg.evaluation.metrics import (
    EMPTY_RULES,
    dice,
    empty_state,
    evaluate_case,
    hd95,
    image_diagonal_mm,
    region_metrics,
)

SHAPE = (16, 16, 16)


def cube(corner: tuple[int, int, int], side: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """Boolean mask of ``shape`` holding a ``side``-voxel cube whose lowest corner is ``corner``."""
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(c, c + side) for c in corner)] = True
    return mask


def voxel(index: tuple[int, ...], shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[index] = True
    return mask


# --- image diagonal -----------------------------------------------------------------------------


def test_image_diagonal_brats_shape():
    # sqrt(240^2 + 240^2 + 155^2) = sqrt(139225) = 373.1287...
    assert image_diagonal_mm((240, 240, 155), (1.0, 1.0, 1.0)) == pytest.approx(373.1287, abs=1e-4)


def test_image_diagonal_anisotropic():
    # extents 10 mm on every axis -> sqrt(300)
    assert image_diagonal_mm((10, 20, 4), (1.0, 0.5, 2.5)) == pytest.approx(math.sqrt(300))


# --- dice / hd95 golden values ------------------------------------------------------------------


def test_identical_masks():
    mask = cube((3, 4, 5), 6)
    assert dice(mask, mask) == 1.0
    assert hd95(mask, mask, (1.0, 0.7, 2.5)) == 0.0


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize(("axis", "expected_mm_per_voxel"), [(0, 1.0), (1, 0.5), (2, 2.5)])
def test_cube_shift(k: int, axis: int, expected_mm_per_voxel: float):
    """10-voxel cubes shifted by k voxels along one axis.

    Dice: overlap (10 - k) * 100 voxels of 1000 + 1000 -> (10 - k) / 10.
    HD95: every surface voxel lies within k voxels of the other surface (shift it back), and the
    far face of each cube (100 of the 488 surface voxels, 20% > 5%) lies exactly k voxels from
    the other surface along the shift axis, so the 95th percentile in both directions is
    k * spacing[axis] — independent of the spacing of the other axes.
    """
    spacing = (1.0, 0.5, 2.5)
    corner = [2, 2, 2]
    ref = cube(tuple(corner), 10)
    corner[axis] += k
    pred = cube(tuple(corner), 10)
    assert dice(pred, ref) == pytest.approx((10 - k) / 10)
    assert hd95(pred, ref, spacing) == pytest.approx(k * expected_mm_per_voxel)


@pytest.mark.parametrize(
    ("offset", "spacing", "expected"),
    [
        ((3, 4, 0), (1.0, 1.0, 1.0), 5.0),  # 3-4-5 triangle
        ((0, 3, 2), (1.0, 1.0, 2.5), math.sqrt(3**2 + 5**2)),  # 2 voxels * 2.5 mm along z
        ((0, 0, 4), (0.5, 0.5, 3.0), 12.0),
    ],
)
def test_single_voxels(offset: tuple[int, int, int], spacing: tuple[float, ...], expected: float):
    ref = voxel((5, 5, 5))
    pred = voxel(tuple(5 + o for o in offset))
    assert dice(pred, ref) == 0.0
    assert hd95(pred, ref, spacing) == pytest.approx(expected)


def test_hd95_is_max_of_directed_percentiles():
    """Pins the definition: max of the two directed 95th percentiles, linear interpolation.

    ref = one voxel; pred = that voxel plus one 10 voxels away. pred->ref distances are [0, 10],
    whose 95th percentile is 0.95 * 10 = 9.5; ref->pred is [0]. Result 9.5 (max HD would be 10,
    MedPy's pooled [0, 0, 10] would give 9.0).
    """
    ref = voxel((2, 5, 5))
    pred = ref | voxel((12, 5, 5))
    assert hd95(pred, ref, (1.0, 1.0, 1.0)) == pytest.approx(9.5)
    assert hd95(ref, pred, (1.0, 1.0, 1.0)) == pytest.approx(9.5)


def test_hd95_masks_touching_the_image_border():
    """Voxels on the array border count as surface; the crop margin is clipped at the edge.

    ref fills the whole 4^3 image (56 surface voxels: all but the 2^3 interior), pred is the 3^3
    corner cube (26 surface voxels: all but (1,1,1)).
    pred->ref: 19 voxels with a 0 coordinate lie on ref's surface (0); the 7 others in {1,2}^3
    are 1 from it. Sorted, positions 23 and 24 of 26 (0.95 * 25 = 23.75) are 1 -> P95 = 1.
    ref->pred: 19 zeros, 27 voxels with one coordinate 3 at 1, 9 with two at sqrt(2), 1 with
    three at sqrt(3); 0.95 * 55 = 52.25 falls between positions 52 and 53, both sqrt(2).
    """
    ref = cube((0, 0, 0), 4, shape=(4, 4, 4))
    pred = cube((0, 0, 0), 3, shape=(4, 4, 4))
    assert hd95(pred, ref, (1.0, 1.0, 1.0)) == pytest.approx(math.sqrt(2))


# --- empty masks --------------------------------------------------------------------------------


def test_raw_definitions_on_empty_masks():
    empty, full = np.zeros(SHAPE, dtype=bool), cube((1, 1, 1), 3)
    assert math.isnan(dice(empty, empty))
    assert dice(empty, full) == 0.0
    assert math.isnan(hd95(empty, full, (1, 1, 1)))
    assert math.isnan(hd95(full, empty, (1, 1, 1)))
    assert math.isnan(hd95(empty, empty, (1, 1, 1)))


@pytest.mark.parametrize(
    ("pred_empty", "ref_empty", "state"),
    [(True, True, "both_empty"), (True, False, "pred_empty"), (False, True, "ref_empty"),
     (False, False, "none")],
)
def test_empty_state(pred_empty: bool, ref_empty: bool, state: str):
    empty, full = np.zeros(SHAPE, dtype=bool), cube((1, 1, 1), 3)
    pred = empty if pred_empty else full
    ref = empty if ref_empty else full
    assert empty_state(pred, ref) == state


def test_brats_rule_both_empty():
    empty = np.zeros(SHAPE, dtype=bool)
    assert region_metrics(empty, empty, (1, 1, 1), "brats") == {
        "dice": 1.0, "hd95": 0.0, "empty_state": "both_empty"
    }


@pytest.mark.parametrize("empty_side", ["pred", "ref"])
def test_brats_rule_one_empty(empty_side: str):
    empty, full = np.zeros(SHAPE, dtype=bool), cube((1, 1, 1), 3)
    pred, ref = (empty, full) if empty_side == "pred" else (full, empty)
    result = region_metrics(pred, ref, (1.0, 1.0, 2.5), "brats")
    # diagonal of 16 x 16 x 16 voxels at (1, 1, 2.5) mm: sqrt(16^2 + 16^2 + 40^2) = sqrt(2112)
    assert result == {
        "dice": 0.0, "hd95": pytest.approx(math.sqrt(2112)), "empty_state": f"{empty_side}_empty"
    }


@pytest.mark.parametrize(("pred_empty", "ref_empty"), [(True, True), (True, False), (False, True)])
def test_nan_rule(pred_empty: bool, ref_empty: bool):
    empty, full = np.zeros(SHAPE, dtype=bool), cube((1, 1, 1), 3)
    result = region_metrics(
        empty if pred_empty else full, empty if ref_empty else full, (1, 1, 1), "nan"
    )
    # Dice is undefined only when both masks are empty; a missed or hallucinated region is 0.
    if pred_empty and ref_empty:
        assert math.isnan(result["dice"])
    else:
        assert result["dice"] == 0.0
    assert math.isnan(result["hd95"])
    assert result["empty_state"] != "none"


@pytest.mark.parametrize("rule", EMPTY_RULES)
def test_rules_agree_when_nothing_is_empty(rule: str):
    ref = cube((2, 2, 2), 10)
    pred = cube((4, 2, 2), 10)
    assert region_metrics(pred, ref, (1, 1, 1), rule) == {
        "dice": pytest.approx(0.8), "hd95": pytest.approx(2.0), "empty_state": "none"
    }


# --- evaluate_case ------------------------------------------------------------------------------


def brats_case() -> np.ndarray:
    """Label map with edema (2), necrosis (1) and enhancing tumour (4) blocks, shape (12, 12, 8)."""
    labels = np.zeros((12, 12, 8), dtype=np.int16)
    labels[2:10, 2:10, 1:7] = 2
    labels[4:8, 4:8, 2:6] = 1
    labels[5:7, 5:7, 3:5] = 4
    return labels


def test_evaluate_case_rows_and_values():
    ref = brats_case()
    pred = ref.copy()
    pred[pred == 4] = 1  # ET predicted as necrosis: WT and TC unchanged, ET missing
    spacing = (1.0, 1.0, 2.0)
    rows = evaluate_case(pred, ref, spacing, BRATS_LEGACY, case="c1")
    assert [(r["region"], r["metric"]) for r in rows] == [
        ("WT", "dice"), ("WT", "hd95"), ("TC", "dice"), ("TC", "hd95"), ("ET", "dice"),
        ("ET", "hd95"),
    ]
    assert {r["case"] for r in rows} == {"c1"}
    assert {r["empty_rule"] for r in rows} == {"brats"}
    values = {(r["region"], r["metric"]): r["value"] for r in rows}
    states = {r["region"]: r["empty_state"] for r in rows}
    assert values[("WT", "dice")] == 1.0 and values[("WT", "hd95")] == 0.0
    assert values[("TC", "dice")] == 1.0 and values[("TC", "hd95")] == 0.0
    assert values[("ET", "dice")] == 0.0
    # diagonal of 12 x 12 x 8 voxels at (1, 1, 2) mm: sqrt(144 + 144 + 256)
    assert values[("ET", "hd95")] == pytest.approx(math.sqrt(544))
    assert states == {"WT": "none", "TC": "none", "ET": "pred_empty"}


def test_evaluate_case_shape_mismatch():
    with pytest.raises(ValueError, match=r"case 'c9'.*shape"):
        evaluate_case(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), (1, 1, 1), BRATS_LEGACY, case="c9")


# --- bad input ----------------------------------------------------------------------------------


def test_unknown_empty_rule():
    mask = cube((1, 1, 1), 3)
    with pytest.raises(ValueError, match="unknown empty_rule 'zero'"):
        region_metrics(mask, mask, (1, 1, 1), "zero")


def test_mask_checks():
    mask = cube((1, 1, 1), 3)
    with pytest.raises(ValueError, match="differ in shape"):
        dice(mask, mask[:-1])
    with pytest.raises(ValueError, match="dtype bool"):
        dice(mask.astype(np.uint8), mask)
    with pytest.raises(ValueError, match="one value per axis"):
        hd95(mask, mask, (1.0, 1.0))
    with pytest.raises(ValueError, match="> 0"):
        hd95(mask, mask, (1.0, 0.0, 1.0))


# --- properties ---------------------------------------------------------------------------------

PROPERTY_SHAPE = (5, 6, 4)
masks = arrays(dtype=bool, shape=PROPERTY_SHAPE)
nonempty_masks = masks.filter(lambda m: bool(m.any()))
spacings = st.tuples(*[st.floats(0.3, 3.0, allow_nan=False)] * 3)


@given(masks, masks)
def test_dice_symmetric_and_bounded(a: np.ndarray, b: np.ndarray):
    d_ab, d_ba = dice(a, b), dice(b, a)
    if not a.any() and not b.any():
        assert math.isnan(d_ab) and math.isnan(d_ba)
    else:
        assert d_ab == d_ba
        assert 0.0 <= d_ab <= 1.0


@given(nonempty_masks, masks, st.booleans())
def test_dice_one_iff_identical(a: np.ndarray, b: np.ndarray, same: bool):
    b = a.copy() if same else b
    assert (dice(a, b) == 1.0) == bool(np.array_equal(a, b))


@given(nonempty_masks, nonempty_masks, spacings)
def test_hd95_symmetric_nonnegative(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]):
    h = hd95(a, b, spacing)
    assert h >= 0.0
    assert h == hd95(b, a, spacing)
    assert hd95(a, a, spacing) == 0.0


@settings(max_examples=40, deadline=None)
@given(nonempty_masks, nonempty_masks, spacings)
def test_hd95_matches_monai(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]):
    """Our scipy HD95 is MONAI's ``compute_hausdorff_distance(percentile=95)`` (float32)."""
    import torch
    from monai.metrics import compute_hausdorff_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI deprecation notices on its own internals
        expected = compute_hausdorff_distance(
            torch.from_numpy(a)[None, None],
            torch.from_numpy(b)[None, None],
            include_background=True,
            percentile=95,
            spacing=list(spacing),
        ).item()
    assert hd95(a, b, spacing) == pytest.approx(expected, rel=1e-5, abs=1e-5)
