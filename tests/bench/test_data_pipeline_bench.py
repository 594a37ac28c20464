"""The ``data_pipeline`` bench section in quick mode (tiny data and patches): every code path
runs and the rows and details have their shape. No timing is asserted."""

from __future__ import annotations

import math

import pytest

from kdseg.bench.common import BenchOptions, SectionResult

DETAIL_COLUMNS = ["patch", "what", "method", "num_workers", "batch_size", "patches_per_s",
                  "s_median", "s_min", "s_max", "n", "startup_s"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[BenchOptions, SectionResult]:
    from kdseg.bench import data_pipeline

    tmp = tmp_path_factory.mktemp("data_pipeline")
    opts = BenchOptions(out=tmp, quick=True, workdir=tmp / "w")
    return opts, data_pipeline.run(opts, {})


def test_rows(quick: tuple[BenchOptions, SectionResult]) -> None:
    _, result = quick
    rows = {row.item: row for row in result.rows}
    assert all(row.section == "data_pipeline" for row in result.rows)
    for item in ("1 worker", "2 workers"):  # beside the step: delivered vs consumed, goal ≥ 1
        row = rows[f"loader 16x16x16, {item}"]
        assert row.unit == "patches/s" and row.goal == "≥ 1×" and row.met is not None
        assert row.ratio == pytest.approx(row.value / row.reference_value)
    in_process = rows["loader 16x16x16, 0 workers"]
    assert in_process.goal == "" and "% of each iteration" in in_process.note
    assert rows["workers needed 16x16x16"].value >= 1
    assert rows["teacher step 16x16x16 consumes"].value > 0
    for edge in (16, 20):
        draw = rows[f"augmented patch {edge}x{edge}x{edge}, in-process"]
        assert draw.reference == "MONAI Compose" and "bit-identical" in draw.note
    # CPU, no train_step section: the GPU-patch loader is reported without a consumer
    big = [r for r in result.rows if r.item.startswith("loader 20x20x20")]
    assert len(big) == 3 and all("no GPU step measured" in r.note for r in big)
    for row in result.rows:
        assert math.isfinite(row.value) and row.value > 0, row


def test_details_and_meta(quick: tuple[BenchOptions, SectionResult]) -> None:
    _, result = quick
    details = result.details
    assert list(details.columns) == DETAIL_COLUMNS
    loaders = details[details["what"] == "loader"]
    assert sorted(zip(loaders["patch"], loaders["num_workers"], strict=True)) == [
        ("16x16x16", 0), ("16x16x16", 1), ("16x16x16", 2),
        ("20x20x20", 0), ("20x20x20", 1), ("20x20x20", 2)]
    assert loaders["startup_s"].notna().all() and (loaders["patches_per_s"] > 0).all()
    steps = details[details["what"] == "train_step"]
    assert set(steps["method"]) == {"baseline", "teacher"}
    meta = result.meta
    assert meta["config_patch"]["identical_to_monai"] is True
    assert meta["gpu_patch"]["identical_to_monai"] is True
    assert meta["gpu_patch"]["gpu_step_s"] is None
    assert meta["gpu_patch"]["gpu_step_source"] == "no GPU step measured"
    assert 0 < meta["config_patch"]["in_process_fraction"] < 1


def test_gpu_step_from_train_step_section(quick: tuple[BenchOptions, SectionResult]) -> None:
    """A GPU step time measured by ``train_step`` sizes the loader at the GPU patch."""
    from kdseg.bench import data_pipeline

    opts, _ = quick  # the same work folder: the data are reused
    previous = {"train_step": SectionResult([], None, {"gpu_step_s": 0.05, "gpu_patch": 20})}
    result = data_pipeline.run(opts, previous)
    rows = {row.item: row for row in result.rows}
    one = rows["loader 20x20x20, 1 worker"]
    assert one.reference_value == pytest.approx(2 / 0.05)  # batch 2 every 50 ms
    assert "train_step section" in one.reference and one.met is not None
    needed = rows["workers needed 20x20x20"]
    assert needed.value == math.ceil(40 / one.value)
    assert result.meta["gpu_patch"]["gpu_step_s"] == 0.05
    assert 0 < result.meta["gpu_patch"]["in_process_fraction"] < 1

    # a step measured at another patch size does not size this loader
    other = {"train_step": SectionResult([], None, {"gpu_step_s": 0.05, "gpu_patch": 128})}
    assert data_pipeline._gpu_step(other, _Trainer(20), opts) == (None, "no GPU step measured")


class _Trainer:
    """Just enough of a Trainer for ``_gpu_step``: its config's patch size."""

    def __init__(self, edge: int) -> None:
        from types import SimpleNamespace

        self.cfg = SimpleNamespace(train=SimpleNamespace(patch_size=[edge] * 3))
