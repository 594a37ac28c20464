"""benchmarks/preprocess.py imports cleanly and maps its arguments onto the ``preprocess``
bench section's plan (the measurement itself: tests/bench/test_preprocess_bench.py)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "preprocess.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_preprocess", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arguments_become_the_sections_plan(tmp_path: Path) -> None:
    bench = _load()
    args = bench.parse_args(["--cases", "3", "--data", str(tmp_path / "raw"), "--out",
                             str(tmp_path / "out"), "--no-per-case", "--patch", "64"])
    plan = bench.plan_from_args(args)
    assert plan.cases == 3 and plan.shape == (240, 240, 155) and not plan.per_case
    assert plan.data == tmp_path / "raw" and plan.out == tmp_path / "out"
    assert plan.reader_patch == 64 and plan.read_cases == 3
    assert plan.cpu in os.sched_getaffinity(0)
    default = bench.parse_args([])
    assert default.cases == 10 and default.per_case and default.json is None


@pytest.mark.parametrize("argv", [["--cases", "0"], ["--read-cases", "0"]])
def test_bad_counts_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        _load().parse_args(argv)
