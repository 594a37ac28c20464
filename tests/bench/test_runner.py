"""The bench runner: outputs after each section, failures reported, earlier results kept."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pandas as pd
import pytest

from kdseg.bench import runner
from kdseg.bench.common import BenchOptions, Row, SectionResult


def _fake_sections(monkeypatch: pytest.MonkeyPatch, calls: list[tuple[str, list[str]]],
                   failing: str | None = None) -> None:
    def module(name: str) -> types.SimpleNamespace:
        def run(opts: BenchOptions, previous: dict[str, SectionResult]) -> SectionResult:
            calls.append((name, sorted(previous)))
            if name == failing:
                raise RuntimeError("boom")
            return SectionResult([Row(name, "x", 1.0, "s")], pd.DataFrame({"v": [1]}),
                                 {"value": name})
        return types.SimpleNamespace(run=run)

    real = runner.importlib.import_module

    def import_module(path: str, *args: object) -> object:
        if path.startswith("kdseg.bench."):
            return module(path.rsplit(".", 1)[1])
        return real(path, *args)

    monkeypatch.setattr(runner.importlib, "import_module", import_module)


def test_failing_section_does_not_stop_the_others(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str]]] = []
    _fake_sections(monkeypatch, calls, failing="inference")
    with pytest.raises(runner.SectionFailed, match="inference"):
        runner.run_bench(BenchOptions(out=tmp_path), runner.SECTIONS)
    assert [c[0] for c in calls] == list(runner.SECTIONS)
    rows = pd.read_csv(tmp_path / "bench.csv")
    assert rows.loc[rows["section"] == "inference", "item"].tolist() == ["section failed"]
    assert "boom" in rows.loc[rows["section"] == "inference", "note"].iloc[0]
    assert (tmp_path / "evaluation.csv").is_file()
    # scaling saw every section measured before it
    assert calls[-1] == ("scaling", sorted(runner.SECTIONS[:-1]))


def test_rerunning_one_section_keeps_the_others(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str]]] = []
    _fake_sections(monkeypatch, calls)
    runner.run_bench(BenchOptions(out=tmp_path), ("train_step", "evaluation"))
    calls.clear()
    runner.run_bench(BenchOptions(out=tmp_path), ("scaling",))
    assert calls == [("scaling", ["evaluation", "train_step"])]
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert list(doc["sections"]) == ["train_step", "evaluation", "scaling"]
    assert pd.read_csv(tmp_path / "bench.csv")["section"].tolist() == [
        "train_step", "evaluation", "scaling"]
    # results measured with other options are not mixed in
    calls.clear()
    runner.run_bench(BenchOptions(out=tmp_path, quick=True), ("scaling",))
    assert calls == [("scaling", [])]
    runner.run_bench(BenchOptions(out=tmp_path), ("train_step", "scaling"))
    # another machine's results are not mixed in
    doc = json.loads((tmp_path / "bench.json").read_text())
    doc["machine"]["cpu"] = "another CPU"
    (tmp_path / "bench.json").write_text(json.dumps(doc))
    calls.clear()
    runner.run_bench(BenchOptions(out=tmp_path), ("scaling",))
    assert calls == [("scaling", [])]
