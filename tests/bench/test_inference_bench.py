"""``kdseg bench inference`` in quick mode: every code path runs, rows and details are complete
and kdseg's class maps equal MONAI's. No timing assertions (the numbers mean nothing here)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from kdseg.bench import inference
from kdseg.bench.common import BenchOptions

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> inference.SectionResult:
    tmp = tmp_path_factory.mktemp("bench_inference")
    opts = BenchOptions(out=tmp, quick=True, workdir=tmp / "w",
                        config=REPO / "config/config.yaml")
    return inference.run(opts, {})


def test_rows(result: inference.SectionResult) -> None:
    goal_rows = [r for r in result.rows if r.goal]
    assert [r.item.split(",")[0] for r in goal_rows] == ["s/case teacher (4 ch)",
                                                         "s/case student (1 ch)"]
    for row in goal_rows:
        assert row.section == "inference" and row.unit == "s" and row.goal == "≥ 1×"
        assert row.reference == inference.REFERENCE
        assert row.value > 0 and row.reference_value and row.reference_value > 0
        assert math.isclose(row.ratio, row.reference_value / row.value)
        assert row.met is (row.ratio >= 1.0)
        assert "48x48x40" in row.item and "classes differ in 0 of voxels" in row.note
    (e2e,) = [r for r in result.rows if not r.goal]
    assert e2e.item.startswith("predict_run s/case") and e2e.value > 0 and e2e.met is None


def test_details(result: inference.SectionResult) -> None:
    details = result.details
    assert details is not None
    assert list(details.columns) == ["network", "in_channels", "variant", "round", "wall_s",
                                     "cpu_s", "shape"]
    assert set(zip(details["network"], details["variant"], strict=True)) == {
        ("teacher", "monai"), ("teacher", "kdseg"), ("student", "monai"),
        ("student", "kdseg"), ("teacher", "predict_run")}
    assert (details["wall_s"] > 0).all() and (details["cpu_s"] >= 0).all()


def test_predictions_agree_and_meta(result: inference.SectionResult) -> None:
    meta = result.meta
    for name in ("teacher", "student"):
        assert meta[name]["class_differ_fraction"] == 0.0
        # 48x48x40 with 24^3 windows at overlap 0.25 (step 18): 3 x 3 x 2 windows
        assert meta[name]["windows"] == 18
        assert meta[name]["kdseg_bf16_autocast"] is False
    assert meta["gpu_paths_measured"] is False and "not measured" in meta["note"]
    assert meta["predict_run"]["cases"] >= 1


def test_window_count_matches_monai() -> None:
    assert inference.window_count((240, 240, 155), (24, 24, 24), 0.25) == 13 * 13 * 9
    assert inference.window_count((10, 30, 24), (24, 24, 24), 0.5) == 1 * 2 * 1
