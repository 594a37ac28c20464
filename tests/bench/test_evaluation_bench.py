"""The ``evaluation`` bench section in quick mode: its rows, details and the value cross-check
against MedPy. No assertion on a time: the quick numbers mean nothing (and the machine is shared).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from kdseg.bench import evaluation
from kdseg.bench.common import BenchOptions, SectionResult
from kdseg.evaluation.metrics import hd95

ITEMS = (
    "Dice + HD95, 3 regions",
    "HD95 max |Δ| vs MedPy (pooled convention)",
    "Dice max |Δ| vs MedPy dc",
    "Dice + HD95, 3 regions, far-corner false positive",
    "HD95 max |Δ| vs MedPy, far-corner false positive",
    "evaluate_case (5 metrics × 3 regions)",
)
TIMED = {
    ("typical", "kdseg"), ("typical", "kdseg_max"), ("typical", "kdseg_evaluate_case"),
    ("typical", "medpy"), ("far_fp", "kdseg"), ("far_fp", "medpy"),
}


def quick_options(tmp_path: Path) -> BenchOptions:
    return BenchOptions(out=tmp_path, quick=True, workdir=tmp_path / "w")


def by_item(result: SectionResult) -> dict[str, object]:
    return {row.item: row for row in result.rows}


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 0.9, 2.5)], ids=["1mm", "aniso"])
def test_quick_section_rows_details_and_values(tmp_path: Path, spacing: tuple[float, ...]):
    pytest.importorskip("medpy.metric.binary")
    result = evaluation.run(quick_options(tmp_path), {}, spacing=spacing)

    rows = by_item(result)
    assert tuple(rows) == ITEMS
    assert all(row.section == "evaluation" for row in result.rows)
    for speed in (rows[ITEMS[0]], rows[ITEMS[3]]):
        assert (speed.unit, speed.reference, speed.goal) == ("s/case", "MedPy dc + hd95", "≥ 5×")
        assert math.isfinite(speed.value) and math.isfinite(speed.reference_value)
        assert speed.ratio == pytest.approx(speed.reference_value / speed.value)
        assert "crop keeps" in speed.note
    hd95_row, dice_row, far_row = rows[ITEMS[1]], rows[ITEMS[2]], rows[ITEMS[4]]
    for row in (hd95_row, far_row):
        assert (row.unit, row.goal) == ("mm", "≤ 0.001 mm")
        assert row.value <= 1e-3 and row.met is True
    assert dice_row.value <= 1e-12 and dice_row.met is True
    assert "Dice max |Δ| 0" in far_row.note
    context = rows[ITEMS[5]]
    assert context.unit == "s/case" and context.goal == "" and context.met is None

    details = result.details
    assert tuple(details.columns) == evaluation.DETAIL_COLUMNS
    times = details[details["measure"] == "time"]
    timed = list(zip(times["case"], times["variant"], strict=True))
    assert sorted(timed) == sorted(TIMED)  # one round per variant in quick mode
    assert set(times["unit"]) == {"s"} and set(times["region"]) == {"WT+TC+ET"}

    values = details[details["measure"] != "time"].set_index(
        ["case", "measure", "variant", "region"])
    for case in evaluation.CASES:
        for region in ("WT", "TC", "ET"):
            ours = values.loc[(case, "hd95_pooled", "kdseg", region), "value"]
            theirs = values.loc[(case, "hd95_pooled", "medpy", region), "value"]
            assert ours == pytest.approx(theirs, abs=1e-9)
            assert values.loc[(case, "dice", "kdseg", region), "value"] == pytest.approx(
                values.loc[(case, "dice", "medpy", region), "value"], abs=1e-12)
            assert 0 < values.loc[(case, "dice", "kdseg", region), "value"] < 1  # masks differ
    for region in ("WT", "TC", "ET"):
        assert values.loc[("typical", "hd95_max", "kdseg", region), "value"] > 0
        # the cube only adds large pred -> ref distances (ref -> pred is unchanged here), which
        # can stay beyond the 95th percentile (2^3 cube in quick mode) but never lower it
        assert values.loc[("far_fp", "hd95_pooled", "kdseg", region), "value"] >= values.loc[
            ("typical", "hd95_pooled", "kdseg", region), "value"]
    assert ("far_fp", "hd95_max", "kdseg", "WT") not in values.index

    meta = result.meta
    assert meta["shape"] == list(evaluation.QUICK_SHAPE) and meta["rounds"] == 1
    assert meta["spacing_mm"] == list(spacing) and meta["medpy"]
    for region in ("WT", "TC", "ET"):
        typical = meta["regions"][region]["crop_fraction"]
        assert 0 < typical < meta["regions_far_fp"][region]["crop_fraction"] < 1


def test_section_runs_without_medpy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A None entry in sys.modules makes ``import`` raise ImportError, as if not installed."""
    for name in ("medpy", "medpy.metric", "medpy.metric.binary"):
        monkeypatch.setitem(sys.modules, name, None)
    result = evaluation.run(quick_options(tmp_path), {})

    rows = by_item(result)
    assert tuple(rows) == ITEMS
    for item in ITEMS[:5]:
        assert rows[item].met is None and "MedPy unavailable" in rows[item].note
    for item in (ITEMS[1], ITEMS[2], ITEMS[4]):
        assert math.isnan(rows[item].value)
    for item in (ITEMS[0], ITEMS[3]):
        assert rows[item].reference_value is None and rows[item].ratio is None
        assert math.isfinite(rows[item].value)
    assert math.isfinite(rows[ITEMS[5]].value)
    assert "medpy" not in set(result.details["variant"])
    assert result.meta["medpy"] is None
    assert "MedPy unavailable" in result.meta["medpy_unavailable"]


@pytest.mark.parametrize("shape", [evaluation.QUICK_SHAPE, (96, 96, 62)])
def test_synthetic_case(shape: tuple[int, int, int]):
    """Nested regions in both maps, legacy BraTS values, a prediction that differs in every
    region, a false-positive blob outside the reference, and determinism."""
    ref, pred = evaluation.synthetic_case(shape)
    assert ref.shape == pred.shape == shape and ref.dtype == pred.dtype == np.uint8
    assert set(np.unique(ref)) == set(np.unique(pred)) == {0, 1, 2, 4}
    conv = evaluation.CONVENTION
    for labels in (ref, pred):
        masks = conv.region_masks(labels)
        assert masks["ET"].any()
        assert not (masks["ET"] & ~masks["TC"]).any() and not (masks["TC"] & ~masks["WT"]).any()
    ref_masks, pred_masks = conv.region_masks(ref), conv.region_masks(pred)
    for region in conv.region_names:
        assert not np.array_equal(ref_masks[region], pred_masks[region])
        assert hd95(pred_masks[region], ref_masks[region], (1, 1, 1)) > 0
    # the false positive: prediction voxels far (> 3 voxels) from any reference tumour voxel
    far = pred_masks["WT"] & (ndimage.distance_transform_edt(~ref_masks["WT"]) > 3)
    assert far.any()
    again_ref, again_pred = evaluation.synthetic_case(shape)
    assert np.array_equal(ref, again_ref) and np.array_equal(pred, again_pred)


@pytest.mark.parametrize("shape", [evaluation.QUICK_SHAPE, (96, 96, 62), (240, 240, 155)])
def test_far_corner_false_positive(shape: tuple[int, int, int]):
    """The prediction plus one ET cube (in every region) in the grid corner farthest from the
    tumour, inset from the array faces; nothing else changes. At full size the crop of every
    region then keeps about a third of the grid (5 % or less without the cube)."""
    ref, pred = evaluation.synthetic_case(shape)
    far = evaluation.far_corner_false_positive(ref, pred)
    side, inset = evaluation.far_corner_side(shape), evaluation.FAR_CORNER_INSET
    assert side == (7 if shape[0] == 240 else max(round(shape[0] / 34), 2))
    changed = far != pred
    assert changed.any() and set(np.unique(far[changed])) == {4}
    assert not (pred != 0)[changed].any()  # added in the background, overwriting nothing
    assert np.count_nonzero(far == 4) == np.count_nonzero(pred == 4) + side**3
    lo = np.array([idx.min() for idx in np.nonzero(changed)])
    hi = np.array([idx.max() for idx in np.nonzero(changed)])
    assert np.array_equal(hi - lo + 1, [side] * 3)
    # the far corner: per axis, the end farther from the reference tumour's centre
    centre = np.array([idx.mean() for idx in np.nonzero(ref)])
    for axis, n in enumerate(shape):
        far_end_is_high = centre[axis] < (n - 1) / 2
        assert (hi[axis] == n - 1 - inset) if far_end_is_high else (lo[axis] == inset)
    if shape[0] == 240:
        conv = evaluation.CONVENTION
        meta = evaluation._region_meta(conv.region_masks(far), conv.region_masks(ref))
        assert all(0.25 < m["crop_fraction"] < 0.5 for m in meta.values())
