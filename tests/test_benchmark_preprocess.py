"""benchmarks/preprocess.py imports cleanly and formats its table (the benchmark is not run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "preprocess.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_preprocess", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_format_table_and_arguments() -> None:
    bench = _load()
    table = bench.format_table([("preprocess s/case", "0.71"), ("peak RSS MiB", "649")])
    lines = table.splitlines()
    assert lines[0].split() == ["quantity", "value"]
    assert set(lines[1]) == {"-"}
    assert lines[2].startswith("preprocess s/case") and lines[2].endswith(" 0.71")
    assert len({len(line) for line in lines}) == 1  # columns aligned
    args = bench.parse_args(["--cases", "3"])
    assert args.cases == 3 and args.per_case and args.child is None
    assert callable(bench.run_preprocessing)
