"""Tests for kdseg.evaluation.metrics: golden values worked out by hand, plus property tests."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage
from scipy.spatial import KDTree

from kdseg.data.labels import BRATS_LEGACY
from kdseg.evaluation import metrics as metrics_module
from kdseg.evaluation.metrics import (
    EMPTY_RULES,
    HD95_CONVENTIONS,
    HIGHER_IS_BETTER,
    METRICS,
    check_nsd_tolerance,
    dice,
    empty_state,
    evaluate_case,
    hd95,
    image_diagonal_mm,
    normalized_surface_dice,
    region_metrics,
    sensitivity,
    specificity,
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


# --- HD95 conventions: "max" (default, MONAI) and "pooled" (MedPy) -----------------------------


def test_hd95_conventions_constant():
    assert HD95_CONVENTIONS == ("max", "pooled")


def test_hd95_pooled_golden_voxel_pair_anisotropic():
    """ref = one voxel; pred = that voxel plus one 4 voxels further along z at 2.5 mm = 10 mm
    (the other spacings never enter: both voxels share x and y).

    pred->ref = [0, 10], ref->pred = [0].
    max: P95([0, 10]) = 0.95 * 10 = 9.5.
    pooled: [0, 0, 10]; rank h = 0.95 * (3 - 1) = 1.9 lies between sorted[1] = 0 and
    sorted[2] = 10 -> 0.9 * 10 = 9.0.
    """
    spacing = (1.0, 0.5, 2.5)
    ref = voxel((5, 5, 2))
    pred = ref | voxel((5, 5, 6))
    assert hd95(pred, ref, spacing) == pytest.approx(9.5)
    assert hd95(pred, ref, spacing, convention="max") == pytest.approx(9.5)
    assert hd95(pred, ref, spacing, convention="pooled") == pytest.approx(9.0)
    assert hd95(ref, pred, spacing, convention="pooled") == pytest.approx(9.0)


def test_hd95_pooled_golden_line():
    """The NSD line of test_nsd_golden_line (2 mm along x; ref x 0..2, pred x 2..5).

    pred->ref = [0, 2, 4, 6]: h = 0.95 * 3 = 2.85 -> 4 + 0.85 * 2 = 5.7.
    ref->pred = [4, 2, 0]: h = 0.95 * 2 = 1.9 -> 2 + 0.9 * 2 = 3.8. max -> 5.7.
    pooled, sorted [0, 0, 2, 2, 4, 4, 6]: h = 0.95 * 6 = 5.7 between sorted[5] = 4 and
    sorted[6] = 6 -> 4 + 0.7 * 2 = 5.4 (the better direction dilutes the worse one's tail).
    """
    line = np.zeros((12, 1, 1), dtype=bool)
    ref, pred = line.copy(), line.copy()
    ref[0:3] = True
    pred[2:6] = True
    spacing = (2.0, 0.5, 0.7)
    assert hd95(pred, ref, spacing) == pytest.approx(5.7)
    assert hd95(pred, ref, spacing, convention="pooled") == pytest.approx(5.4)
    assert hd95(ref, pred, spacing, convention="pooled") == pytest.approx(5.4)


@pytest.mark.parametrize("k", [1, 3])
def test_hd95_pooled_cube_shift(k: int):
    """Shifted cubes (test_cube_shift): both directed arrays are k * spacing on 100 of 488
    voxels and smaller elsewhere, so the pooled tail is the same 20 % -> the same k * 2.5 mm."""
    ref = cube((2, 2, 2), 10)
    pred = cube((2, 2, 2 + k), 10)
    assert hd95(pred, ref, (1.0, 0.5, 2.5), convention="pooled") == pytest.approx(k * 2.5)


def test_hd95_pooled_empty_and_identical():
    mask = cube((3, 4, 5), 6)
    empty = np.zeros(SHAPE, dtype=bool)
    assert hd95(mask, mask, (1.0, 0.7, 2.5), convention="pooled") == 0.0
    assert math.isnan(hd95(mask, empty, (1.0, 1.0, 1.0), convention="pooled"))
    assert math.isnan(hd95(empty, empty, (1.0, 1.0, 1.0), convention="pooled"))


def test_unknown_hd95_convention():
    mask = cube((1, 1, 1), 3)
    with pytest.raises(ValueError, match="unknown HD95 convention 'medpy'"):
        hd95(mask, mask, (1, 1, 1), convention="medpy")


# --- sensitivity / specificity / NSD golden values ---------------------------------------------


def test_metric_constants():
    assert METRICS == ("dice", "hd95", "nsd", "sensitivity", "specificity")
    assert HIGHER_IS_BETTER == {
        "dice": True, "hd95": False, "nsd": True, "sensitivity": True, "specificity": True
    }


def test_sensitivity_specificity_golden():
    """4 x 4 x 1 image (16 voxels): ref is the 2 x 2 block at the origin, pred two of its voxels
    plus the far corner.

    TP = 2, FN = 2, FP = 1, TN = 16 - 4 - 1 = 11 -> sensitivity 2 / 4, specificity 11 / 12,
    Dice 2 * 2 / (3 + 4) = 4 / 7.
    """
    ref = np.zeros((4, 4, 1), dtype=bool)
    ref[0:2, 0:2] = True
    pred = np.zeros((4, 4, 1), dtype=bool)
    pred[0, 0:2] = True
    pred[3, 3] = True
    assert sensitivity(pred, ref) == 0.5
    assert specificity(pred, ref) == pytest.approx(11 / 12, rel=1e-15)
    assert dice(pred, ref) == pytest.approx(4 / 7, rel=1e-15)
    # Not symmetric: with the roles swapped TP = 2, |R| = 3, FP = 2, background 13.
    assert sensitivity(ref, pred) == pytest.approx(2 / 3, rel=1e-15)
    assert specificity(ref, pred) == pytest.approx(11 / 13, rel=1e-15)


@pytest.mark.parametrize(
    ("tolerance", "expected"),
    [(0.0, 2 / 7), (1.99, 2 / 7), (2.0, 4 / 7), (3.9, 4 / 7), (4.0, 6 / 7), (6.0, 1.0)],
)
def test_nsd_golden_line(tolerance: float, expected: float):
    """Masks on a 12 x 1 x 1 line at 2 mm along x (every voxel is surface: its y/z neighbours
    are outside the array, i.e. background).

    ref = x 0..2 (3 voxels), pred = x 2..5 (4 voxels).
    pred -> ref distances: x=2: 0, x=3: 2, x=4: 4, x=5: 6 mm.
    ref -> pred distances: x=0: 4, x=1: 2, x=2: 0 mm.
    Counted within tau, over 7 surface voxels: tau < 2 -> 1 + 1; 2 <= tau < 4 -> 2 + 2 (ties are
    inside: ``<=``); 4 <= tau < 6 -> 3 + 3; tau >= 6 -> 4 + 3.
    """
    line = np.zeros((12, 1, 1), dtype=bool)
    ref, pred = line.copy(), line.copy()
    ref[0:3] = True
    pred[2:6] = True
    spacing = (2.0, 0.5, 0.7)  # the other axes have one voxel each and never enter a distance
    assert normalized_surface_dice(pred, ref, spacing, tolerance) == pytest.approx(expected)
    assert normalized_surface_dice(ref, pred, spacing, tolerance) == pytest.approx(expected)


def test_nsd_golden_shifted_cubes():
    """10-voxel cubes shifted by one voxel along x, 1 mm isotropic; 488 surface voxels each.

    ref spans x 2..11, pred x 3..12. A pred surface voxel lies *on* ref's surface (distance 0)
    when it is in the ring of 36 side voxels of an x-slice both cubes share: slices 3..11,
    9 x 36 = 324. The other 164 (pred's top face x = 12, 100 voxels, and the 8 x 8 = 64 inner
    voxels of its bottom face x = 3, which sit on ref's interior) are 1 mm from ref's surface.
    ref -> pred is the mirror image. tau in [0, 1) -> 2 * 324 / (2 * 488) = 81/122; tau = 1 -> 1.
    """
    ref = cube((2, 2, 2), 10)
    pred = cube((3, 2, 2), 10)
    assert normalized_surface_dice(pred, ref, (1, 1, 1), 0.5) == pytest.approx(81 / 122)
    assert normalized_surface_dice(pred, ref, (1, 1, 1), 0.0) == pytest.approx(81 / 122)
    assert normalized_surface_dice(pred, ref, (1, 1, 1), 1.0) == 1.0


def test_nsd_identical_and_huge_tolerance():
    mask = cube((3, 4, 5), 6)
    assert normalized_surface_dice(mask, mask, (1.0, 0.7, 2.5), 0.0) == 1.0
    far = voxel((15, 15, 15))
    assert normalized_surface_dice(mask, far, (1.0, 0.7, 2.5), 1e9) == 1.0


def test_region_metrics_computes_surface_distances_once(monkeypatch: pytest.MonkeyPatch):
    """HD95 and NSD share one pair of directed distance arrays (two nearest-surface searches per
    region, not four)."""
    calls = []
    original = metrics_module._directed_surface_distances

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(metrics_module, "_directed_surface_distances", counting)
    region_metrics(cube((2, 2, 2), 10), cube((4, 2, 2), 10), (1, 1, 1))
    assert len(calls) == 2


# --- empty masks --------------------------------------------------------------------------------


def test_raw_definitions_on_empty_masks():
    empty, full = np.zeros(SHAPE, dtype=bool), cube((1, 1, 1), 3)
    assert math.isnan(dice(empty, empty))
    assert dice(empty, full) == 0.0
    assert math.isnan(hd95(empty, full, (1, 1, 1)))
    assert math.isnan(hd95(full, empty, (1, 1, 1)))
    assert math.isnan(hd95(empty, empty, (1, 1, 1)))
    # NSD as MONAI: 0/0 when both are empty; 0 when one surface has no partner at all
    assert math.isnan(normalized_surface_dice(empty, empty, (1, 1, 1), 1.0))
    assert normalized_surface_dice(empty, full, (1, 1, 1), 1.0) == 0.0
    assert normalized_surface_dice(full, empty, (1, 1, 1), 1e9) == 0.0
    assert math.isnan(sensitivity(full, empty)) and math.isnan(sensitivity(empty, empty))
    assert sensitivity(empty, full) == 0.0
    assert specificity(empty, empty) == 1.0


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


def assert_metrics_equal(result: dict, expected: dict) -> None:
    """``result == expected`` key by key, NaN equal to NaN, floats to 1e-12."""
    assert list(result) == list(expected)
    for key, value in expected.items():
        if isinstance(value, str):
            assert result[key] == value, key
        elif math.isnan(value):
            assert math.isnan(result[key]), key
        else:
            assert result[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


NAN = math.nan
# 16^3 image at (1, 1, 2.5) mm: diagonal sqrt(16^2 + 16^2 + 40^2) = sqrt(2112).
DIAG = math.sqrt(2112)
# The non-empty mask is a 27-voxel cube; with an empty reference all 4096 voxels are reference
# background and the 27 predicted ones are false positives: specificity (4096 - 27) / 4096.
SPEC_FP = 4069 / 4096


@pytest.mark.parametrize(
    ("rule", "state", "expected"),
    [
        ("brats", "both_empty", (1.0, 0.0, 1.0, 1.0, 1.0)),
        ("brats", "pred_empty", (0.0, DIAG, 0.0, 0.0, 1.0)),
        ("brats", "ref_empty", (0.0, DIAG, 0.0, 1.0, SPEC_FP)),
        ("nan", "both_empty", (NAN, NAN, NAN, NAN, 1.0)),
        ("nan", "pred_empty", (0.0, NAN, 0.0, 0.0, 1.0)),
        ("nan", "ref_empty", (0.0, NAN, 0.0, NAN, SPEC_FP)),
    ],
)
def test_empty_rule_table(rule: str, state: str, expected: tuple[float, ...]):
    """Every branch of EMPTY_RULES for every metric (values in METRICS order)."""
    empty, full = np.zeros(SHAPE, dtype=bool), cube((1, 1, 1), 3)
    pred = empty if state in ("both_empty", "pred_empty") else full
    ref = empty if state in ("both_empty", "ref_empty") else full
    result = region_metrics(pred, ref, (1.0, 1.0, 2.5), rule, nsd_tolerance_mm=2.0)
    expected_row = {**dict(zip(METRICS, expected, strict=True)), "empty_state": state}
    assert_metrics_equal(result, expected_row)


@pytest.mark.parametrize("state", ["both_empty", "pred_empty", "ref_empty"])
def test_nan_rule_is_the_raw_definitions(state: str):
    """Under "nan" every value is what the stand-alone metric function returns."""
    empty, full = np.zeros(SHAPE, dtype=bool), cube((1, 1, 1), 3)
    pred = empty if state in ("both_empty", "pred_empty") else full
    ref = empty if state in ("both_empty", "ref_empty") else full
    spacing = (1.0, 1.0, 2.5)
    raw = {
        "dice": dice(pred, ref),
        "hd95": hd95(pred, ref, spacing),
        "nsd": normalized_surface_dice(pred, ref, spacing, 1.0),
        "sensitivity": sensitivity(pred, ref),
        "specificity": specificity(pred, ref),
        "empty_state": state,
    }
    assert_metrics_equal(region_metrics(pred, ref, spacing, "nan"), raw)


@pytest.mark.parametrize("rule", EMPTY_RULES)
def test_rules_agree_when_nothing_is_empty(rule: str):
    """Cubes of 1000 voxels shifted by 2 along x in a 16^3 image (4096 voxels).

    TP 800, FP 200, FN 200: sensitivity 0.8; reference background 3096 of which 200 predicted:
    specificity 2896 / 3096.
    """
    ref = cube((2, 2, 2), 10)
    pred = cube((4, 2, 2), 10)
    expected = {
        "dice": 0.8,
        "hd95": 2.0,
        "nsd": normalized_surface_dice(pred, ref, (1, 1, 1), 1.0),
        "sensitivity": 0.8,
        "specificity": 2896 / 3096,
        "empty_state": "none",
    }
    assert_metrics_equal(region_metrics(pred, ref, (1, 1, 1), rule), expected)


def test_specificity_nan_without_reference_background():
    full = np.ones((3, 3, 3), dtype=bool)
    assert math.isnan(specificity(full, full))
    for rule in EMPTY_RULES:
        assert math.isnan(region_metrics(full, full, (1, 1, 1), rule)["specificity"])


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
        (region, metric) for region in ("WT", "TC", "ET") for metric in METRICS
    ]
    assert {r["case"] for r in rows} == {"c1"}
    assert {r["empty_rule"] for r in rows} == {"brats"}
    assert {r["nsd_tolerance_mm"] for r in rows} == {1.0}
    values = {(r["region"], r["metric"]): r["value"] for r in rows}
    states = {r["region"]: r["empty_state"] for r in rows}
    for region in ("WT", "TC"):
        assert values[(region, "dice")] == 1.0 and values[(region, "hd95")] == 0.0
        assert values[(region, "nsd")] == 1.0 and values[(region, "sensitivity")] == 1.0
        assert values[(region, "specificity")] == 1.0
    assert values[("ET", "dice")] == 0.0
    # diagonal of 12 x 12 x 8 voxels at (1, 1, 2) mm: sqrt(144 + 144 + 256)
    assert values[("ET", "hd95")] == pytest.approx(math.sqrt(544))
    assert values[("ET", "nsd")] == 0.0 and values[("ET", "sensitivity")] == 0.0
    assert values[("ET", "specificity")] == 1.0  # nothing predicted, so no false positive
    assert states == {"WT": "none", "TC": "none", "ET": "pred_empty"}


def test_evaluate_case_nsd_tolerance_reaches_rows():
    """TC predicted one voxel (2 mm) too deep along z: NSD < 1 at 1 mm, 1 at 2 mm."""
    ref = brats_case()
    pred = np.zeros_like(ref)
    pred[:, :, 1:] = ref[:, :, :-1]
    for tolerance, full_marks in ((1.0, False), (2.0, True)):
        rows = evaluate_case(pred, ref, (1.0, 1.0, 2.0), BRATS_LEGACY, nsd_tolerance_mm=tolerance)
        assert {r["nsd_tolerance_mm"] for r in rows} == {tolerance}
        nsd_tc = next(r["value"] for r in rows if r["region"] == "TC" and r["metric"] == "nsd")
        assert (nsd_tc == 1.0) == full_marks


def test_evaluate_case_shape_mismatch():
    with pytest.raises(ValueError, match=r"case 'c9'.*shape"):
        evaluate_case(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), (1, 1, 1), BRATS_LEGACY, case="c9")


# --- bad input ----------------------------------------------------------------------------------


def test_unknown_empty_rule():
    mask = cube((1, 1, 1), 3)
    with pytest.raises(ValueError, match="unknown empty_rule 'zero'"):
        region_metrics(mask, mask, (1, 1, 1), "zero")


@pytest.mark.parametrize("bad", [-0.5, math.nan, math.inf, "1 mm", None])
def test_bad_nsd_tolerance(bad):
    mask = cube((1, 1, 1), 3)
    with pytest.raises(ValueError, match="NSD tolerance"):
        check_nsd_tolerance(bad)
    with pytest.raises(ValueError, match="NSD tolerance"):
        normalized_surface_dice(mask, mask, (1, 1, 1), bad)
    with pytest.raises(ValueError, match="NSD tolerance"):
        region_metrics(mask, mask, (1, 1, 1), nsd_tolerance_mm=bad)
    with pytest.raises(ValueError, match="NSD tolerance"):
        evaluate_case(brats_case(), brats_case(), (1, 1, 1), BRATS_LEGACY, nsd_tolerance_mm=bad)


def test_zero_nsd_tolerance_is_valid():
    assert check_nsd_tolerance(0) == 0.0


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
    with pytest.raises(ValueError, match="one value per axis"):
        normalized_surface_dice(mask, mask, (1.0, 1.0), 1.0)
    for func in (sensitivity, specificity):
        with pytest.raises(ValueError, match="dtype bool"):
            func(mask, mask.astype(np.int8))
        with pytest.raises(ValueError, match="differ in shape"):
            func(mask, mask[:, :-1])


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


@given(nonempty_masks, nonempty_masks, spacings)
def test_hd95_pooled_symmetric_and_bounded(
    a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]
):
    """Pooled HD95 is symmetric and lies between the smaller directed ``method="lower"`` P95
    and the larger ``method="higher"`` one (p = 0.95, parts of n_1 and n_2 values, N = n_1 + n_2).
    Upper bound: proof in test_medpy_crosscheck.py. Lower bound: each part has at most
    ``p (n_i - 1)`` values below its ``lower`` P95, so the union has at most
    ``p (N - 2) <= floor(p (N - 1))`` below the smaller one, and the pooled sample's element
    ``floor(p (N - 1))``, where the interpolation starts, is not below it."""
    pooled = hd95(a, b, spacing, convention="pooled")
    assert pooled == hd95(b, a, spacing, convention="pooled")
    a_to_b, b_to_a = metrics_module._surface_distances(a, b, np.asarray(spacing))
    lo = min(np.percentile(d, 95, method="lower") for d in (a_to_b, b_to_a))
    hi = max(np.percentile(d, 95, method="higher") for d in (a_to_b, b_to_a))
    assert lo - 1e-12 <= pooled <= hi + 1e-12


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


tolerances = st.floats(0.0, 10.0, allow_nan=False)


@given(masks, masks)
def test_sensitivity_specificity_bounded_and_complementary(a: np.ndarray, b: np.ndarray):
    """Both in [0, 1]; specificity of a vs b is 1 - (FP rate), i.e. sensitivity of ~a vs ~b."""
    for value in (sensitivity(a, b), specificity(a, b)):
        assert math.isnan(value) or 0.0 <= value <= 1.0
    if (~b).any():
        assert specificity(a, b) == pytest.approx(sensitivity(~a, ~b), rel=1e-12)


@given(nonempty_masks, nonempty_masks, spacings, tolerances)
def test_nsd_symmetric_bounded_identity(
    a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...], tolerance: float
):
    value = normalized_surface_dice(a, b, spacing, tolerance)
    assert 0.0 <= value <= 1.0
    assert value == normalized_surface_dice(b, a, spacing, tolerance)
    assert normalized_surface_dice(a, a, spacing, tolerance) == 1.0


@given(nonempty_masks, nonempty_masks, spacings, tolerances, tolerances)
def test_nsd_monotone_in_tolerance(
    a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...], t1: float, t2: float
):
    low, high = sorted((t1, t2))
    assert normalized_surface_dice(a, b, spacing, low) <= normalized_surface_dice(
        a, b, spacing, high
    )
    # Beyond the image diagonal every surface voxel has a partner: NSD 1.
    diagonal = image_diagonal_mm(PROPERTY_SHAPE, spacing)
    assert normalized_surface_dice(a, b, spacing, diagonal + high) == 1.0


@given(nonempty_masks, nonempty_masks, spacings, tolerances)
def test_region_metrics_match_standalone_functions(
    a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...], tolerance: float
):
    """The shared-distance path of region_metrics gives the stand-alone functions' values."""
    result = region_metrics(a, b, spacing, nsd_tolerance_mm=tolerance)
    assert result["hd95"] == hd95(a, b, spacing)
    assert result["nsd"] == normalized_surface_dice(a, b, spacing, tolerance)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("tolerance", [0.0, 0.8, 1.3, 2.5, 4.0])
def test_nsd_matches_monai(seed: int, tolerance: float):
    """Our NSD is MONAI's ``compute_surface_dice(use_subvoxels=False)`` (float32).

    Random 9 x 10 x 7 masks at anisotropic spacing; tolerances 0.8, 1.3, 2.5 equal one voxel
    along an axis, so ties at exactly tau (counted as within) are exercised too.
    """
    import torch
    from monai.metrics import compute_surface_dice

    rng = np.random.default_rng(seed)
    a, b = rng.random((9, 10, 7)) < 0.3, rng.random((9, 10, 7)) < 0.3
    spacing = (0.8, 1.3, 2.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI deprecation notices on its own internals
        expected = compute_surface_dice(
            torch.from_numpy(a)[None, None].float(),
            torch.from_numpy(b)[None, None].float(),
            class_thresholds=[tolerance],
            include_background=True,
            spacing=list(spacing),
            use_subvoxels=False,
        ).item()
    assert normalized_surface_dice(a, b, spacing, tolerance) == pytest.approx(expected, rel=1e-6)


# --- nearest-surface search vs the distance-transform reference --------------------------------


def edt_surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference for ``metrics._surface_distances`` (the implementation before the
    KD-tree): surfaces by face-connected erosion with ``border_value=0``, then one Euclidean
    distance transform of the *whole* grid (no crop) per direction with ``sampling=spacing``,
    read at the surface voxels in C order."""
    sp = np.asarray(spacing, dtype=np.float64)
    pred_surface = pred & ~ndimage.binary_erosion(pred, border_value=0)
    ref_surface = ref & ~ndimage.binary_erosion(ref, border_value=0)
    return (
        ndimage.distance_transform_edt(~ref_surface, sampling=sp)[pred_surface],
        ndimage.distance_transform_edt(~pred_surface, sampling=sp)[ref_surface],
    )


def far_corner_pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping smooth blobs in a 40 x 44 x 30 grid, the prediction with a 2^3 false
    positive in the far corner: the joint bounding box is the whole grid."""
    rng = np.random.default_rng(seed)
    shape = (40, 44, 30)
    field = ndimage.gaussian_filter(rng.random(shape), 3.0)
    ref = field > np.quantile(field, 0.97)
    pred = ndimage.binary_dilation(ref) if seed % 2 else ndimage.binary_erosion(ref)
    pred = pred.copy()
    pred[-3:-1, -3:-1, -3:-1] = True
    ref[0, 0, 0] = True  # and a reference voxel in the opposite corner, on the array border
    return pred, ref


def random_case(seed: int) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Random masks in 1, 2 or 3 dimensions (noise or smooth blobs) at generic (irrational-like)
    anisotropic spacing; seeds 0 and 1 are far_corner_pair."""
    rng = np.random.default_rng(seed)
    if seed < 2:
        pred, ref = far_corner_pair(seed)
        return pred, ref, tuple(float(s) for s in rng.uniform(0.4, 3.0, size=3))
    ndim = (1, 2, 3, 3)[seed % 4]
    shape = tuple(int(n) for n in rng.integers(3, 40 if ndim < 3 else 16, size=ndim))
    spacing = tuple(float(s) for s in rng.uniform(0.3, 3.0, size=ndim))
    if seed % 3:
        density = rng.uniform(0.05, 0.5)
        return rng.random(shape) < density, rng.random(shape) < density, spacing
    pred, ref = (ndimage.gaussian_filter(rng.random(shape), 2.0) > 0.5 for _ in range(2))
    return pred, ref, spacing


@pytest.mark.parametrize("seed", range(40))
def test_surface_distances_bit_identical_to_distance_transform(seed: int):
    """The KD-tree search gives exactly the distance transform's distances (same voxels, same
    order, same float values): at generic spacing no two nearest voxels tie at different
    offsets, and the distance is recomputed from the index offset as the transform does. So
    HD95 (both conventions) and NSD at a tolerance equal to *every* occurring distance, the
    boundary case of ``<=``, are identical too."""
    pred, ref, spacing = random_case(seed)
    if not pred.any() or not ref.any():
        pytest.skip("an empty mask")
    expected = edt_surface_distances(pred, ref, spacing)
    ours = metrics_module._surface_distances(pred, ref, np.asarray(spacing))
    for got, want in zip(ours, expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    for convention in HD95_CONVENTIONS:
        assert hd95(pred, ref, spacing, convention) == metrics_module._hd95_from_distances(
            *expected, convention)
    for tolerance in np.unique(np.concatenate(expected)):
        assert normalized_surface_dice(pred, ref, spacing, tolerance) == (
            metrics_module._nsd_from_distances(*expected, tolerance))


@settings(max_examples=60, deadline=None)
@given(nonempty_masks, nonempty_masks, spacings)
def test_surface_distances_match_distance_transform(
    a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]
):
    """Any masks and spacings (hypothesis likes round, equal and commensurable ones, where nearest
    voxels can tie at different offsets whose rounded lengths differ by an ulp): equal to 1e-9 mm,
    the same voxels in the same order."""
    expected = edt_surface_distances(a, b, spacing)
    ours = metrics_module._surface_distances(a, b, np.asarray(spacing))
    for got, want in zip(ours, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_nsd_tolerance_exactly_k_voxels(axis: int, k: int):
    """Slabs one voxel thick every ``k + 1`` voxels along ``axis``, pred in the gaps' first plane:
    every surface distance is exactly ``k`` voxel spacings along ``axis``. A tolerance of exactly
    ``k * spacing`` (exact in floating point for k = 1, 2) counts every voxel (``<=``), the next
    float below counts none, as with the distance transform.

    The KD-tree's own distances, from differences of positions in mm (``3 * 0.9 - 2 * 0.9`` is
    0.9000000000000001), fall on both sides of the tolerance here: the guard below shows that
    reading them directly would flip counts at this boundary.
    """
    spacing = (0.9, 1.3, 0.7)
    period = k + 1
    shape = [3, 4, 2]
    shape[axis] = 12 * period
    ref, pred = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    index = [slice(None)] * 3
    index[axis] = slice(0, None, 2 * period)
    ref[tuple(index)] = True
    index[axis] = slice(k, None, 2 * period)
    pred[tuple(index)] = True
    tolerance = k * spacing[axis]

    positions = np.stack(np.nonzero(pred), axis=1) * spacing
    tree_distances, _ = KDTree(np.stack(np.nonzero(ref), axis=1) * spacing).query(positions)
    assert (tree_distances > tolerance).any()  # the hazard is present in this configuration

    for reference_distances in edt_surface_distances(pred, ref, spacing):
        assert np.all(reference_distances == tolerance)
    for distances in metrics_module._surface_distances(pred, ref, np.asarray(spacing)):
        assert np.all(distances == tolerance)
    assert normalized_surface_dice(pred, ref, spacing, tolerance) == 1.0
    assert normalized_surface_dice(pred, ref, spacing, np.nextafter(tolerance, 0)) == 0.0
    result = region_metrics(pred, ref, spacing, nsd_tolerance_mm=tolerance)
    assert result["nsd"] == 1.0 and result["hd95"] == tolerance
