"""``evaluation`` section: Dice + HD95 of three BraTS regions of a full-size case vs MedPy.

The case is generated here with numpy/scipy rather than by :mod:`kdseg.data.synthetic`: the
synthetic generator spends ~11 s on one 240 x 240 x 155 case (brain template, four modalities)
and only its label map would be used, while the few lines below build a reference and a
prediction in ~0.4 s and make the kind of prediction error explicit.

Two cases (:data:`CASES`): ``typical``, the synthetic case, whose tumours keep kdseg's bounding
box crop to a few percent of the grid, and ``far_fp``, the same prediction plus a small
false-positive cube in the grid corner farthest from the tumour
(:func:`far_corner_false_positive`), the worst case for that crop. What is timed, on the same
boolean region masks (WT ⊃ TC ⊃ ET of the legacy BraTS convention), variants interleaved round by
round (:func:`kdseg.bench.common.interleaved_times`):

* ``kdseg`` (both cases): :func:`kdseg.evaluation.metrics.dice` and
  ``hd95(..., convention="pooled")`` per region, i.e. the numbers MedPy computes, from kdseg's
  code;
* ``kdseg_max`` (typical case): the same with kdseg's default HD95 convention (``"max"``, what
  kdseg reports); the summary note gives it, the two differ only in the final percentile;
* ``medpy`` (both cases): ``medpy.metric.binary.dc(result, reference)`` and
  ``hd95(result, reference, voxelspacing=spacing)`` per region;
* ``kdseg_evaluate_case`` (typical case): :func:`kdseg.evaluation.metrics.evaluate_case` on the
  two label maps (region masks plus all five metrics for three regions, no file I/O): the
  per-case work of ``kdseg evaluate``, a context figure without a goal.

Each case has a speed-up row (goal ≥ 5×) and a values row comparing kdseg's pooled HD95 with
MedPy's per region (goal: equal within 1e-3 mm); the typical case also has a Dice row. Why kdseg
is faster: MedPy erodes both masks and runs a Euclidean distance transform of the *whole* grid
for each direction, while kdseg erodes only the joint bounding box of the two masks
(``meta["regions"][r]["crop_fraction"]``, ``meta["regions_far_fp"]`` for the second case), shares
one erosion per mask between the two directions, and finds each surface voxel's nearest
surface voxel of the other mask with a KD-tree, whose cost depends on the number of surface
voxels and not on the box. Measured once on a shared 2-core machine (medians of 3 rounds):
typical case (crops keep 5.1 % (WT) and 1.7 % (TC, ET) of the grid) 0.056 s against MedPy's
3.1 s (55x); far-corner case (a 7^3 cube; crops keep 42 % and 33 %) 0.11 s against 2.9 s
(27x). With a distance transform of the box in place of the KD-tree the same section measured
0.14 s against 4.9 s (35x) and 1.47 s against 6.1 s (4.1x).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from importlib import metadata
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from kdseg.bench.common import (
    BenchOptions,
    Row,
    SectionResult,
    interleaved_times,
    median,
    speedup_row,
)
from kdseg.data.labels import BRATS_LEGACY, LabelConvention
from kdseg.evaluation import metrics

SECTION = "evaluation"
SPEEDUP_GOAL = 5.0
"""The issue's goal: kdseg's Dice + HD95 at least this many times faster than MedPy's."""
HD95_TOLERANCE_MM = 1e-3
"""The issue's goal: HD95 equal to MedPy's within this many mm (pooled convention)."""
DICE_TOLERANCE = 1e-12
"""Dice is the same formula on the same counts: anything above rounding would be a bug."""
QUICK_SHAPE: tuple[int, int, int] = (48, 48, 40)
SPACING_MM: tuple[float, float, float] = (1.0, 1.0, 1.0)
"""BraTS's 1 mm isotropic grid (the tests also run an anisotropic one)."""
CONVENTION: LabelConvention = BRATS_LEGACY
ALL_REGIONS = "+".join(CONVENTION.region_names)

_LABEL = dict(zip(CONVENTION.class_names, CONVENTION.label_values, strict=True))

FAR_CORNER_INSET = 2
"""Voxels between the far-corner false positive and the array faces
(:func:`far_corner_false_positive`)."""
CASES: dict[str, str] = {
    "typical": "the synthetic case",
    "far_fp": "the same with a false positive in the far corner",
}
"""The two cases timed: :func:`synthetic_case` (typical: the crop keeps a few percent of the
grid) and :func:`far_corner_false_positive` of it (the worst case for the crop)."""

DETAIL_COLUMNS: tuple[str, ...] = ("case", "measure", "variant", "region", "round", "value",
                                   "unit")
"""Long format of ``evaluation.csv``: ``case`` is a key of :data:`CASES`; ``measure`` is ``time``
(one row per variant and round, ``region`` = all three) or ``dice`` / ``hd95_pooled`` /
``hd95_max`` (one row per region and implementation, ``round`` empty; ``hd95_max`` for the
typical case only)."""

Masks = dict[str, np.ndarray]


# --- the case -----------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise of ``shape`` (float32), rescaled to mean 0 and std 1."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return (field - field.mean()) / max(float(field.std()), 1e-12)


def _paint_tumour(
    labels: np.ndarray,
    box: tuple[slice, ...],
    centre: np.ndarray,
    radius: float,
    levels: tuple[float, float, float],
    outline_noise: np.ndarray,
) -> None:
    """Paint a nested tumour into ``labels`` (uint8, shape ``(X, Y, Z)``) inside ``box``, in place.

    The normalised radius ``rho = |x - centre| / (radius * (1 + 0.15 n(x)))``, with
    ``outline_noise`` ``n`` (smooth, std 1, shape of ``box``), gives an irregular outline;
    ``levels`` are the ``rho`` thresholds of the whole tumour (edema, ED), the tumour core and
    the necrotic centre (NCR), so the enhancing tumour (ET) is the shell between the last two,
    as in glioblastomas. Only ``box`` is computed: the tumour fits in it.
    """
    lo = np.array([s.start for s in box], dtype=np.float32)
    offsets = np.indices(outline_noise.shape, dtype=np.float32)
    offsets += (lo - centre).astype(np.float32).reshape(3, 1, 1, 1)
    distance = np.sqrt(np.sum(offsets**2, axis=0))
    outline = np.maximum(1.0 + 0.15 * outline_noise, 0.5)
    rho = distance / (np.float32(radius) * outline)
    whole, core, necrosis = levels
    sub = labels[box]
    sub[rho < whole] = _LABEL["ED"]
    sub[rho < core] = _LABEL["ET"]
    sub[rho < necrosis] = _LABEL["NCR"]


def synthetic_case(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A reference label map and a realistically wrong prediction of it.

    Args:
        shape: grid ``(X, Y, Z)``; the tumour scales with it (whole-tumour radius ``X / 8``:
            30 voxels at BraTS's 240, ~100k voxels).
        seed: randomness of both outlines.

    Returns:
        ``(reference, prediction)``, uint8 arrays of ``shape`` holding the legacy BraTS values
        (0, NCR 1, ED 2, ET 4). The prediction's outline noise is 80 % the reference's and 20 %
        its own (variance), it is shifted by ``(2, -1, 1)`` voxels (scaled with the tumour),
        over-segments the edema (whole tumour at ``rho < 1.06`` instead of 1), under-segments
        the core (0.52 instead of 0.55) with a thinner necrotic centre, and has a small
        false-positive ET blob about two tumour radii away (a vessel taken for enhancement), so
        every region has a non-trivial HD95 that depends on the direction.
    """
    rng = np.random.default_rng([seed, 0])
    grid = np.asarray(shape, dtype=np.float64)
    radius = min(shape[0], shape[1]) / 8.0
    centre = grid * np.array([0.56, 0.44, 0.52])
    # one box for both tumours, so that their outline noise can be correlated voxel by voxel
    lo = np.maximum(np.floor(centre - 1.8 * radius).astype(int), 0)
    hi = np.minimum(np.ceil(centre + 1.8 * radius).astype(int) + 1, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    sigma = max(radius / 4.0, 1.0)  # outline bumps of ~ a quarter radius (7.5 mm at full size)
    ref_noise = _smooth_noise(rng, tuple(hi - lo), sigma)
    pred_noise = np.sqrt(0.8) * ref_noise + np.sqrt(0.2) * _smooth_noise(rng, ref_noise.shape,
                                                                         sigma)
    ref = np.zeros(shape, dtype=np.uint8)
    _paint_tumour(ref, box, centre, radius, (1.0, 0.55, 0.35), ref_noise)

    pred = np.zeros(shape, dtype=np.uint8)
    shift = np.round(np.array([2.0, -1.0, 1.0]) * radius / 30.0)
    _paint_tumour(pred, box, centre + shift, radius, (1.06, 0.52, 0.38), pred_noise)
    blob_centre = np.clip(centre + radius * np.array([1.7, 0.8, -0.3]), 0, grid - 1)
    blob_radius = max(radius / 7.0, 1.5)
    offsets = np.indices(shape, dtype=np.float32, sparse=True)
    in_blob = sum((o - c) ** 2 for o, c in zip(offsets, blob_centre, strict=True))
    pred[in_blob <= blob_radius**2] = _LABEL["ET"]
    return ref, pred


def far_corner_side(shape: tuple[int, ...]) -> int:
    """Edge in voxels of the far-corner false positive: ``max(round(X / 34), 2)``, 7 at 240."""
    return max(round(shape[0] / 34), 2)


def far_corner_false_positive(ref_labels: np.ndarray, pred_labels: np.ndarray) -> np.ndarray:
    """``pred_labels`` plus a small false-positive ET cube in the grid corner farthest from the
    reference tumour: the worst case for a crop to the joint bounding box of the two masks.

    Args:
        ref_labels: reference label map, shape ``(X, Y, Z)`` (legacy BraTS values).
        pred_labels: prediction label map, same shape.

    Returns:
        A copy of ``pred_labels`` with a cube of :func:`far_corner_side` voxels (7 at BraTS's
        240) labelled ET, :data:`FAR_CORNER_INSET` voxels from the array faces of the
        corner farthest from the reference tumour's centre of mass. ET lies in every legacy
        region (ET ⊂ TC ⊂ WT), so each region's bounding box grows to a third or more of the grid
        (33-42 % at full size).
    """
    shape = np.asarray(ref_labels.shape)
    side = far_corner_side(ref_labels.shape)
    centre = np.array(ndimage.center_of_mass(ref_labels > 0))
    far_high = centre < (shape - 1) / 2.0  # per axis: is the far end the high one?
    lo = np.where(far_high, shape - FAR_CORNER_INSET - side, FAR_CORNER_INSET)
    pred = pred_labels.copy()
    pred[tuple(slice(int(a), int(a) + side) for a in lo)] = _LABEL["ET"]
    return pred


# --- the timed work -----------------------------------------------------------------------------


def kdseg_dice_hd95(pred: Masks, ref: Masks, spacing: tuple[float, ...],
                    convention: str = "pooled") -> dict[str, tuple[float, float]]:
    """``{region: (Dice, HD95 mm)}`` by kdseg; masks boolean, shape ``(X, Y, Z)`` each."""
    return {
        region: (metrics.dice(pred[region], ref[region]),
                 metrics.hd95(pred[region], ref[region], spacing, convention=convention))
        for region in ref
    }


def medpy_dc_hd95(binary: ModuleType, pred: Masks, ref: Masks,
                  spacing: tuple[float, ...]) -> dict[str, tuple[float, float]]:
    """``{region: (Dice, HD95 mm)}`` by MedPy's ``binary.dc`` / ``binary.hd95`` (result first)."""
    return {
        region: (float(binary.dc(pred[region], ref[region])),
                 float(binary.hd95(pred[region], ref[region], voxelspacing=spacing)))
        for region in ref
    }


def _import_medpy() -> tuple[ModuleType | None, str]:
    """MedPy's ``metric.binary`` module and version, or ``(None, why)`` where it cannot load."""
    try:
        from medpy.metric import binary
    except Exception as exc:  # ImportError, or a MedPy that fails against this NumPy/SciPy
        return None, f"MedPy unavailable ({type(exc).__name__}: {exc})"
    try:
        version = metadata.version("medpy")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return binary, version


def value_rows(case: str, ours: dict[str, tuple[float, float]],
               ours_max: dict[str, tuple[float, float]] | None,
               theirs: dict[str, tuple[float, float]] | None) -> list[dict[str, Any]]:
    """Detail rows (:data:`DETAIL_COLUMNS`) of the per-region values of each implementation on
    ``case``; ``hd95_max`` rows only where ``ours_max`` is given, MedPy's where ``theirs`` is."""
    rows: list[dict[str, Any]] = []
    for region in ours:
        rows += [
            {"measure": "dice", "variant": "kdseg", "region": region, "value": ours[region][0],
             "unit": ""},
            {"measure": "hd95_pooled", "variant": "kdseg", "region": region,
             "value": ours[region][1], "unit": "mm"},
        ]
        if ours_max is not None:
            rows.append({"measure": "hd95_max", "variant": "kdseg", "region": region,
                         "value": ours_max[region][1], "unit": "mm"})
        if theirs is not None:
            rows += [
                {"measure": "dice", "variant": "medpy", "region": region,
                 "value": theirs[region][0], "unit": ""},
                {"measure": "hd95_pooled", "variant": "medpy", "region": region,
                 "value": theirs[region][1], "unit": "mm"},
            ]
    return [{"case": case, **row} for row in rows]


def max_abs_differences(ours: dict[str, tuple[float, float]],
                        theirs: dict[str, tuple[float, float]]) -> tuple[float, float]:
    """``(max |ΔDice|, max |ΔHD95| in mm)`` over the regions of two ``{region: (Dice, HD95)}``."""
    dice_diff = max(abs(ours[r][0] - theirs[r][0]) for r in ours)
    hd95_diff = max(abs(ours[r][1] - theirs[r][1]) for r in ours)
    return dice_diff, hd95_diff


def _region_meta(pred: Masks, ref: Masks) -> dict[str, dict[str, Any]]:
    """Voxel counts and the fraction of the grid kdseg's crop keeps, per region (the "why")."""
    out: dict[str, dict[str, Any]] = {}
    for region in ref:
        # kdseg's own crop (a private helper: this reports exactly what metrics.py processes)
        box = metrics._joint_bbox(pred[region], ref[region], metrics._CROP_MARGIN)
        kept = math.prod(s.stop - s.start for s in box)
        out[region] = {"ref_voxels": int(np.count_nonzero(ref[region])),
                       "pred_voxels": int(np.count_nonzero(pred[region])),
                       "crop_shape": [s.stop - s.start for s in box],
                       "crop_fraction": kept / ref[region].size}
    return out


# --- the section --------------------------------------------------------------------------------


def _crop_note(regions: dict[str, dict[str, Any]]) -> str:
    """``"crop keeps 5.0 % (WT), 1.7 % (TC), 1.7 % (ET) of the grid"`` from :func:`_region_meta`."""
    kept = ", ".join(f"{100 * m['crop_fraction']:.1f} % ({r})" for r, m in regions.items())
    return f"kdseg's crop keeps {kept} of the grid"


def run(opts: BenchOptions, previous: dict[str, SectionResult],
        spacing: tuple[float, float, float] = SPACING_MM) -> SectionResult:
    """Time kdseg's and MedPy's Dice + HD95 on two cases and compare their values.

    Args:
        opts: ``full_shape`` (``QUICK_SHAPE`` when ``quick``) and ``repeats`` (1 when ``quick``)
            are used; nothing is written to ``workdir``.
        previous: other sections' results (unused).
        spacing: voxel size in mm per axis (BraTS: 1 mm; the tests pass an anisotropic one).

    Returns:
        Rows, typical case then far-corner false positive (:data:`CASES`): the speed-up (goal
        ≥ 5×), HD95 and Dice differences to MedPy (goals ≤ 1e-3 mm and ≤ 1e-12; one row with
        the HD95 goal and the Dice difference in its note for the second case), and kdseg's
        whole per-case evaluation of the typical case in s/case (context); details in
        :data:`DETAIL_COLUMNS`.
    """
    del previous
    shape = QUICK_SHAPE if opts.quick else tuple(opts.full_shape)
    rounds = 1 if opts.quick else max(int(opts.repeats), 1)
    sp = tuple(float(s) for s in spacing)
    ref_labels, pred_labels = synthetic_case(shape)
    far_labels = far_corner_false_positive(ref_labels, pred_labels)
    ref, pred = CONVENTION.region_masks(ref_labels), CONVENTION.region_masks(pred_labels)
    far = CONVENTION.region_masks(far_labels)
    binary, medpy_version = _import_medpy()

    last: dict[str, Any] = {}

    def keep(name: str, fn: Callable[[], Any]) -> Callable[[], None]:
        # interleaved_times drops return values; keep the last call's for the value comparison
        return lambda: last.__setitem__(name, fn())

    # timed name -> (case, variant) of the detail rows
    names = {"kdseg": ("typical", "kdseg"), "kdseg_max": ("typical", "kdseg_max"),
             "kdseg_evaluate_case": ("typical", "kdseg_evaluate_case"),
             "medpy": ("typical", "medpy"),
             "kdseg_far_fp": ("far_fp", "kdseg"), "medpy_far_fp": ("far_fp", "medpy")}
    variants: dict[str, Callable[[], None]] = {
        "kdseg": keep("kdseg", lambda: kdseg_dice_hd95(pred, ref, sp, "pooled")),
        "kdseg_max": keep("kdseg_max", lambda: kdseg_dice_hd95(pred, ref, sp, "max")),
        "kdseg_evaluate_case": keep("kdseg_evaluate_case", lambda: metrics.evaluate_case(
            pred_labels, ref_labels, sp, CONVENTION)),
        "kdseg_far_fp": keep("kdseg_far_fp", lambda: kdseg_dice_hd95(far, ref, sp, "pooled")),
    }
    if binary is not None:
        variants["medpy"] = keep("medpy", lambda: medpy_dc_hd95(binary, pred, ref, sp))
        variants["medpy_far_fp"] = keep("medpy_far_fp",
                                        lambda: medpy_dc_hd95(binary, far, ref, sp))
    times = interleaved_times(variants, rounds=rounds, warmup=1)

    details = [{"case": names[name][0], "measure": "time", "variant": names[name][1],
                "region": ALL_REGIONS, "round": i, "value": t, "unit": "s"}
               for name, values in times.items() for i, t in enumerate(values)]
    details += value_rows("typical", last["kdseg"], last["kdseg_max"], last.get("medpy"))
    details += value_rows("far_fp", last["kdseg_far_fp"], None, last.get("medpy_far_fp"))
    t = {name: median(values) for name, values in times.items()}
    regions = {"typical": _region_meta(pred, ref), "far_fp": _region_meta(far, ref)}

    case = f"{'x'.join(map(str, shape))} at {'x'.join(f'{s:g}' for s in sp)} mm"
    item = "Dice + HD95, 3 regions"  # the same in quick mode; the note gives the grid
    far_item = f"{item}, far-corner false positive"
    far_hd95_item = "HD95 max |Δ| vs MedPy, far-corner false positive"
    side = far_corner_side(shape)
    far_case = f"{case}; + {side}^3 ET false positive in the far corner"
    hd95_max_note = ", ".join(f"{r} {v[1]:.3f}" for r, v in last["kdseg_max"].items())
    if binary is not None:
        dice_diff, hd95_diff = max_abs_differences(last["kdseg"], last["medpy"])
        far_dice_diff, far_hd95_diff = max_abs_differences(last["kdseg_far_fp"],
                                                           last["medpy_far_fp"])
        hd95_note = ", ".join(f"{r} {v[1]:.3f}" for r, v in last["medpy"].items())
        far_hd95_note = ", ".join(f"{r} {v[1]:.3f}" for r, v in last["medpy_far_fp"].items())
        rows = [
            speedup_row(SECTION, item, t["kdseg"], "s/case", "MedPy dc + hd95", t["medpy"],
                        SPEEDUP_GOAL, note=f"{case}; {_crop_note(regions['typical'])}; "
                                           f"kdseg's default (max) HD95 convention: "
                                           f"{t['kdseg_max']:.3g} s"),
            Row(SECTION, "HD95 max |Δ| vs MedPy (pooled convention)", hd95_diff, "mm",
                goal=f"≤ {HD95_TOLERANCE_MM:g} mm", met=hd95_diff <= HD95_TOLERANCE_MM,
                note=f"MedPy HD95 mm {hd95_note}; kdseg's max convention {hd95_max_note}"),
            Row(SECTION, "Dice max |Δ| vs MedPy dc", dice_diff, "",
                goal=f"≤ {DICE_TOLERANCE:g}", met=dice_diff <= DICE_TOLERANCE,
                note=", ".join(f"{r} {v[0]:.4f}" for r, v in last["kdseg"].items())),
            speedup_row(SECTION, far_item, t["kdseg_far_fp"], "s/case", "MedPy dc + hd95",
                        t["medpy_far_fp"], SPEEDUP_GOAL,
                        note=f"{far_case}; {_crop_note(regions['far_fp'])}"),
            Row(SECTION, far_hd95_item, far_hd95_diff, "mm",
                goal=f"≤ {HD95_TOLERANCE_MM:g} mm", met=far_hd95_diff <= HD95_TOLERANCE_MM,
                note=f"pooled convention; MedPy HD95 mm {far_hd95_note}; "
                     f"Dice max |Δ| {far_dice_diff:.3g}"),
        ]
    else:
        rows = [
            Row(SECTION, item, t["kdseg"], "s/case", "MedPy dc + hd95", None, None,
                f"≥ {SPEEDUP_GOAL:g}×", None, f"{case}; {medpy_version}: no reference"),
            Row(SECTION, "HD95 max |Δ| vs MedPy (pooled convention)", math.nan, "mm",
                goal=f"≤ {HD95_TOLERANCE_MM:g} mm", note=f"{medpy_version}: not compared"),
            Row(SECTION, "Dice max |Δ| vs MedPy dc", math.nan, "",
                goal=f"≤ {DICE_TOLERANCE:g}", note=f"{medpy_version}: not compared"),
            Row(SECTION, far_item, t["kdseg_far_fp"], "s/case", "MedPy dc + hd95", None, None,
                f"≥ {SPEEDUP_GOAL:g}×", None, f"{far_case}; {medpy_version}: no reference"),
            Row(SECTION, far_hd95_item, math.nan, "mm",
                goal=f"≤ {HD95_TOLERANCE_MM:g} mm", note=f"{medpy_version}: not compared"),
        ]
    rows.append(Row(SECTION, "evaluate_case (5 metrics × 3 regions)", t["kdseg_evaluate_case"],
                    "s/case", note=f"{case}; region masks + Dice, HD95, NSD, sensitivity, "
                                   "specificity from label maps, no file I/O"))

    meta = {
        "shape": list(shape), "spacing_mm": list(sp), "rounds": rounds,
        "medpy": medpy_version if binary is not None else None,
        "medpy_unavailable": None if binary is not None else medpy_version,
        "median_s": t, "regions": regions["typical"], "regions_far_fp": regions["far_fp"],
        "far_fp_side": side,
    }
    frame = pd.DataFrame(details, columns=list(DETAIL_COLUMNS))
    frame["round"] = frame["round"].astype("Int64")  # integers, empty for the value rows
    return SectionResult(rows=rows, details=frame, meta=meta)
