"""The ``preprocess`` bench section in quick mode (2 tiny cases): every code path runs and the
rows and details have their shape. No timing is asserted."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from kdseg.bench.common import BenchOptions


def test_preprocess_section_quick(tmp_path: Path) -> None:
    from kdseg.bench import preprocess

    opts = BenchOptions(out=tmp_path, quick=True, workdir=tmp_path / "w")
    result = preprocess.run(opts, {})

    items = [row.item for row in result.rows]
    assert all(row.section == "preprocess" for row in result.rows)
    assert items[0].startswith("s per case 4x32x36x32 (whole run / 2")
    assert any(i.startswith("s per case (one at a time)") for i in items)
    assert any(i.startswith("peak memory, 2 cases") for i in items)
    assert any(i.startswith("training reader private memory, 2 cases open") for i in items)
    for row in result.rows:
        assert math.isfinite(row.value) and row.value > 0, row
    first = result.rows[0]
    assert first.goal == "≤ 2 s" and first.met is not None and "crop keeps" in first.note
    reader = next(r for r in result.rows if r.item.startswith("training reader"))
    assert reader.goal == "≤ 1.1×" and reader.met is not None

    details = result.details
    assert list(details.columns) == ["case", "preprocess_s", "plain_read_s", "input_mib",
                                     "output_mib", "crop_fraction"]
    assert list(details["case"]) == ["SYN_0000", "SYN_0001"]
    assert (details["preprocess_s"] > 0).all() and (details["output_mib"] > 0).all()
    assert details["plain_read_s"].notna().sum() == 1  # quick: one case read for reference
    assert ((details["crop_fraction"] > 0) & (details["crop_fraction"] <= 1)).all()

    meta = result.meta
    assert meta["cases"] == 2 and meta["case_shape"] == [4, 32, 36, 32]
    assert meta["whole_run"]["affinity"] == [meta["pinned_cpu"]]
    assert meta["whole_run"]["peak_rss_mib"] >= meta["whole_run"]["rss_after_imports_mib"]
    assert meta["training_reader"]["patch"] == 16

    # the generated cases stay in the work folder for the next run
    _, missing = preprocess.case_folders(tmp_path / "w" / "raw_32x36x32", 2)
    assert meta["generated_cases"] == 2 and missing == 0


def test_output_folder_holding_the_data_is_refused(tmp_path: Path) -> None:
    from kdseg.bench.preprocess import Plan, measure

    plan = Plan(cases=1, shape=(32, 36, 32), data=tmp_path / "out" / "raw", out=tmp_path / "out",
                cpu=max(os.sched_getaffinity(0)))
    with pytest.raises(ValueError, match="wipe the data"):
        measure(plan, log=False)
