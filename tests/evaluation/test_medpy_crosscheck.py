"""Cross-check of kdseg.evaluation.metrics against MedPy, an independent implementation.

MedPy (``medpy.metric.binary``, 0.5.2) is a test-only dependency. What is compared:

* Dice, sensitivity, specificity: same formulas, so equal to 1e-12 on every non-degenerate case.
  On degenerate inputs MedPy's source has ``except ZeroDivisionError`` branches (Dice 1 for two
  empty masks, sensitivity 0 for an empty reference, specificity 0 without background), but its
  counts are NumPy integers, and ``np.int64 / 0.0`` returns NaN with a RuntimeWarning instead of
  raising, so under NumPy 2 it returns NaN there, which is our raw definition too.
  ``test_medpy_degenerate_inputs`` records that. Our empty-mask *rules* sit on top of those raw
  values in ``region_metrics`` and are not MedPy's business.
* Surfaces and surface distances: MedPy takes ``mask ^ binary_erosion(mask)`` with face
  connectivity and scipy's default ``border_value=0``, so a voxel on the array border is a
  surface voxel in MedPy exactly as in ours. There is no border difference: on masks that touch
  or fill the array, the two directed distance arrays are the same voxels in the same order with
  the same values, whether or not our bounding-box crop is clipped at the edge.
* HD95 conventions differ. Ours (MONAI's ``compute_hausdorff_distance(percentile=95)``) is
  ``max(P95(d_pred->ref), P95(d_ref->pred))``; MedPy's ``hd95`` is ``P95`` of the union
  (concatenation) of both directed arrays. Both use NumPy's linear interpolation. So:

  (a) ``P95(concatenation of our two directed arrays) == medpy.hd95`` to 1e-6 mm on every case:
      same surfaces and distances, different summary. That is what
      ``hd95(..., convention="pooled")`` returns, checked on every case here and on more random
      masks (``test_pooled_convention_equals_medpy_on_random_masks``).
  (b) "ours >= MedPy" is *not* true in every case. For smooth blob masks, where one direction
      has the worse tail, the union dilutes that tail and MedPy is smaller (checked on all seeds
      below). When both directed arrays have the *same* distribution (mirror-symmetric
      configurations: equal disjoint cubes in opposite corners, or the 2-voxel pair below) the
      union is each sample twice, and linear interpolation on the doubled sample lands about half
      a rank higher. So MedPy is *larger*: 9.5 vs 10 mm for the pair, 17.315 vs 17.380 mm for the
      corner cubes. On small random noise masks (4 to 13 voxels a side, 300 seeds) this happened
      in 20 of 300, by at most 0.75 mm (median 0.06 mm).
      What does hold in every case, and is tested: MedPy's value is at most the larger of the two
      directed percentiles taken at the next sample up (NumPy ``method="higher"``). Proof: with
      ``p = 0.95`` and ``h_i = p (n_i - 1)``, each part has at least ``p (n_i - 1) + 1`` values
      <= that bound, so the union has at least ``p (N - 2) + 2 >= p (N - 1) + 1`` of its
      ``N = n_1 + n_2`` values there. That is enough to put the pooled sample's element
      ``ceil(p (N - 1))``, and with it the pooled linear percentile, at or below the bound.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

from kdseg.evaluation import metrics
from kdseg.evaluation.metrics import dice, hd95, sensitivity, specificity

binary = pytest.importorskip("medpy.metric.binary")

SHAPE = (10, 12, 8)
SPACING = (0.9, 1.2, 2.5)


def box(lo: tuple[int, ...], hi: tuple[int, ...], shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """Boolean mask of ``shape`` that is True on ``[lo, hi)`` per axis."""
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return mask


def tilted_sheet() -> np.ndarray:
    """A 1-voxel-thick staircase sheet rising one z step per x step (clipped at the top)."""
    mask = np.zeros(SHAPE, dtype=bool)
    for x in range(SHAPE[0]):
        mask[x, :, min(x, SHAPE[2] - 1)] = True
    return mask


def edge_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Named (pred, ref) pairs: single voxels, array border, identical, disjoint, thin sheets."""
    single_a, single_b = np.zeros(SHAPE, dtype=bool), np.zeros(SHAPE, dtype=bool)
    single_a[2, 3, 4] = True
    single_b[7, 9, 1] = True
    full = np.ones(SHAPE, dtype=bool)
    sheet_z3, sheet_z5, sheet_x4 = (np.zeros(SHAPE, dtype=bool) for _ in range(3))
    sheet_z3[:, :, 3] = True
    sheet_z5[:, :, 5] = True
    sheet_x4[4] = True
    partial_sheet = np.zeros(SHAPE, dtype=bool)
    partial_sheet[2:8, 2:10, 3] = True
    inner = box((2, 2, 2), (8, 9, 6))
    return {
        "single_voxels": (single_a, single_b),
        "same_single_voxel": (single_a, single_a.copy()),
        "voxel_vs_cube": (single_a, box((1, 2, 3), (5, 6, 6))),
        "full_array_vs_corner_cube": (full, box((0, 0, 0), (4, 4, 3))),
        "border_slabs": (box((0, 0, 0), (3, 12, 8)), box((0, 0, 0), (5, 12, 8))),
        "border_corner_vs_inner": (box((0, 0, 0), (3, 3, 3)), inner),
        "identical": (inner, inner.copy()),
        "identical_full_array": (full, full.copy()),
        "disjoint_cubes": (box((1, 1, 1), (4, 4, 4)), box((6, 6, 4), (9, 10, 7))),
        "disjoint_opposite_corners": (box((0, 0, 0), (3, 3, 3)), box((7, 9, 5), (10, 12, 8))),
        "parallel_sheets": (sheet_z3, sheet_z5),
        "crossing_sheets": (sheet_z3, sheet_x4),
        "sheet_vs_slab": (partial_sheet, box((2, 2, 2), (8, 10, 5))),
        "tilted_vs_flat_sheet": (tilted_sheet(), sheet_z3),
    }


def noise_pair(seed: int) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Salt-and-pepper masks (many small components, much surface at the border), random shape
    and anisotropic spacing."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(5, 14, size=3))
    spacing = tuple(float(s) for s in rng.uniform(0.4, 3.0, size=3))
    density = rng.uniform(0.1, 0.5)
    return rng.random(shape) < density, rng.random(shape) < density, spacing


def blob_pair(seed: int) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Two smooth blob masks (thresholded smoothed noise, a few connected blobs each),
    24 x 28 x 20 at BraTS-like anisotropic spacing."""
    rng = np.random.default_rng(seed)
    shape = (24, 28, 20)

    def blob() -> np.ndarray:
        return ndimage.gaussian_filter(rng.random(shape), 2.5) > 0.52

    return blob(), blob(), (1.0, 0.9, 2.5)


NOISE_SEEDS = range(8)
BLOB_SEEDS = range(8)
CASES: dict[str, tuple[np.ndarray, np.ndarray, tuple[float, ...]]] = {
    **{name: (p, r, SPACING) for name, (p, r) in edge_cases().items()},
    **{f"noise_{s}": noise_pair(s) for s in NOISE_SEEDS},
    **{f"blob_{s}": blob_pair(s) for s in BLOB_SEEDS},
}


def our_directed_distances(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """The two directed arrays our HD95 and NSD use (pred -> ref, ref -> pred), in mm."""
    return metrics._surface_distances(pred, ref, np.asarray(spacing, dtype=np.float64))


def test_cases_are_nonempty_and_cover_the_border():
    """Guard on the fixtures: every mask non-empty; some touch the array border."""
    for name, (pred, ref, _) in CASES.items():
        assert pred.any() and ref.any(), name
    touching = [
        name for name, (pred, _, _) in CASES.items()
        if pred[0].any() or pred[-1].any() or pred[:, 0].any() or pred[:, :, -1].any()
    ]
    assert {"full_array_vs_corner_cube", "border_slabs", "parallel_sheets"} <= set(touching)


@pytest.mark.parametrize("name", list(CASES))
def test_overlap_metrics_equal_medpy(name: str):
    """Both argument orders. A reference filling the whole array has no background: specificity
    is NaN in both (see test_medpy_degenerate_inputs); everything else is a number."""
    pred, ref, _ = CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # MedPy's 0/0 for that specificity
        pairs = [
            (dice(pred, ref), binary.dc(pred, ref)),
            (sensitivity(pred, ref), binary.sensitivity(pred, ref)),
            (sensitivity(ref, pred), binary.sensitivity(ref, pred)),
            (specificity(pred, ref), binary.specificity(pred, ref)),
            (specificity(ref, pred), binary.specificity(ref, pred)),
        ]
    for ours, theirs in pairs:
        if math.isnan(ours):
            assert math.isnan(theirs) and name in ("full_array_vs_corner_cube",
                                                   "identical_full_array")
        else:
            assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_pooled_directed_distances_equal_medpy_hd95(name: str):
    """(a): same surfaces and distances; only the summary differs."""
    pred, ref, spacing = CASES[name]
    pred_to_ref, ref_to_pred = our_directed_distances(pred, ref, spacing)
    pooled = np.percentile(np.concatenate([pred_to_ref, ref_to_pred]), 95)
    assert pooled == pytest.approx(binary.hd95(pred, ref, voxelspacing=spacing), abs=1e-6)
    # Our HD95 is the max of the same arrays' directed percentiles.
    assert hd95(pred, ref, spacing) == max(
        np.percentile(pred_to_ref, 95), np.percentile(ref_to_pred, 95)
    )
    # The public pooled convention is exactly that pooled percentile, in both argument orders.
    assert hd95(pred, ref, spacing, convention="pooled") == pooled
    assert hd95(ref, pred, spacing, convention="pooled") == pytest.approx(pooled, abs=1e-12)


@pytest.mark.parametrize("seed", range(100, 124))
def test_pooled_convention_equals_medpy_on_random_masks(seed: int):
    """Random masks of random shape and anisotropic spacing: noise (many small components) for
    even seeds, smooth blobs cut from a random sub-box for odd ones (so some touch the border)."""
    if seed % 2 == 0:
        pred, ref, spacing = noise_pair(seed)
    else:
        pred, ref, spacing = blob_pair(seed)
        rng = np.random.default_rng(seed)
        lo = rng.integers(0, 6, size=3)
        box_ = tuple(slice(int(a), None) for a in lo)
        pred, ref = pred[box_], ref[box_]
        spacing = tuple(float(s) for s in rng.uniform(0.4, 3.0, size=3))
    if not pred.any() or not ref.any():
        pytest.skip("an empty mask (MedPy raises there)")
    theirs = binary.hd95(pred, ref, voxelspacing=spacing)
    assert hd95(pred, ref, spacing, convention="pooled") == pytest.approx(theirs, abs=1e-9)
    assert hd95(ref, pred, spacing, convention="pooled") == pytest.approx(theirs, abs=1e-9)


@pytest.mark.parametrize("name", list(CASES))
def test_surface_distances_identical_voxel_by_voxel(name: str):
    """Stronger than (a), through MedPy's module-private ``__surface_distances``: the same
    surface voxels (so the same counts, also on the array border) in the same C order, with the
    same distances."""
    medpy_surface_distances = getattr(binary, "__surface_distances", None)
    if medpy_surface_distances is None:
        pytest.skip("MedPy no longer has the private __surface_distances helper")
    pred, ref, spacing = CASES[name]
    pred_to_ref, ref_to_pred = our_directed_distances(pred, ref, spacing)
    np.testing.assert_allclose(
        pred_to_ref, medpy_surface_distances(pred, ref, voxelspacing=spacing), rtol=0, atol=1e-9
    )
    np.testing.assert_allclose(
        ref_to_pred, medpy_surface_distances(ref, pred, voxelspacing=spacing), rtol=0, atol=1e-9
    )


def test_full_array_surface_is_its_border_in_both():
    """A mask filling the 10 x 12 x 8 array: surface = border voxels = 960 - 8 * 10 * 6 = 480."""
    full = np.ones(SHAPE, dtype=bool)
    ours, _ = our_directed_distances(full, full, SPACING)
    assert ours.size == 480
    medpy_surface_distances = getattr(binary, "__surface_distances", None)
    if medpy_surface_distances is not None:
        assert medpy_surface_distances(full, full).size == 480


@pytest.mark.parametrize("name", list(CASES))
def test_medpy_hd95_bounded_by_directed_higher_percentiles(name: str):
    """(b) in the form that holds in every case (proof in the module docstring)."""
    pred, ref, spacing = CASES[name]
    pred_to_ref, ref_to_pred = our_directed_distances(pred, ref, spacing)
    bound = max(
        np.percentile(pred_to_ref, 95, method="higher"),
        np.percentile(ref_to_pred, 95, method="higher"),
    )
    assert binary.hd95(pred, ref, voxelspacing=spacing) <= bound + 1e-9


@pytest.mark.parametrize("seed", BLOB_SEEDS)
def test_ours_at_least_medpy_on_smooth_blobs(seed: int):
    """(b) as usually stated: the worse direction dominates ours, the union dilutes it."""
    pred, ref, spacing = blob_pair(seed)
    ours, theirs = hd95(pred, ref, spacing), binary.hd95(pred, ref, voxelspacing=spacing)
    assert ours >= theirs
    assert ours > theirs  # the two directions differ on every seed here, so strictly larger


@pytest.mark.parametrize(
    ("pred", "ref", "spacing", "ours", "theirs"),
    [
        pytest.param(
            *edge_cases()["disjoint_opposite_corners"], SPACING, 17.3150, 17.3796,
            id="opposite_corner_cubes",
        ),
        # pred = x {0, 10}, ref = x {0, -10} (shifted by 10 into the array): both directed
        # arrays are [0, 10] -> each P95 = 0.95 * 10 = 9.5; pooled [0, 0, 10, 10] has
        # h = 0.95 * 3 = 2.85 between two 10s -> 10.
        pytest.param(
            box((10, 0, 0), (11, 1, 1), (21, 1, 1)) | box((20, 0, 0), (21, 1, 1), (21, 1, 1)),
            box((10, 0, 0), (11, 1, 1), (21, 1, 1)) | box((0, 0, 0), (1, 1, 1), (21, 1, 1)),
            (1.0, 1.0, 1.0), 9.5, 10.0,
            id="two_voxel_pairs",
        ),
    ],
)
def test_medpy_larger_when_both_directions_agree(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], ours: float, theirs: float
):
    """Where "ours >= MedPy" fails: identically distributed directed arrays, whose union is the
    same sample twice, and linear interpolation on the doubled sample lands higher."""
    pred_to_ref, ref_to_pred = our_directed_distances(pred, ref, spacing)
    np.testing.assert_allclose(np.sort(pred_to_ref), np.sort(ref_to_pred), rtol=0, atol=1e-9)
    assert hd95(pred, ref, spacing) == pytest.approx(ours, abs=1e-4)
    assert binary.hd95(pred, ref, voxelspacing=spacing) == pytest.approx(theirs, abs=1e-4)


def test_medpy_degenerate_inputs():
    """MedPy's ZeroDivisionError fallbacks are unreachable with NumPy integer counts: NaN, as our
    raw definitions. HD95 with an empty mask raises in MedPy; ours returns NaN."""
    empty = np.zeros(SHAPE, dtype=bool)
    one = empty.copy()
    one[1, 1, 1] = True
    full = np.ones(SHAPE, dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # MedPy's 0/0 in NumPy
        assert math.isnan(binary.dc(empty, empty)) and math.isnan(dice(empty, empty))
        assert math.isnan(binary.sensitivity(one, empty)) and math.isnan(sensitivity(one, empty))
        assert math.isnan(binary.specificity(full, full)) and math.isnan(specificity(full, full))
    with pytest.raises(RuntimeError):
        binary.hd95(empty, one)
    assert math.isnan(hd95(empty, one, SPACING))
