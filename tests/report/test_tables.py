"""Summary tables: seeds averaged per case first, golden means/sds, NaN rows excluded."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from kdseg.report.tables import comparison_markdown, metric_means, summarise


def _rows(stage: str, subset: str, method: str, seed: int, values: dict[str, float],
          order: int) -> list[dict]:
    return [{"stage": stage, "subset": subset, "method": method, "fold": 0, "seed": seed,
             "case": case, "region": "WT", "metric": "dice", "value": v, "empty_state": "none",
             "row_order": order} for case, v in values.items()]


def test_seeds_are_averaged_per_case_before_summarising() -> None:
    long = pd.DataFrame(
        _rows("teacher", "all", "teacher", 0, {"a": 0.9, "b": 0.7}, 0)
        + _rows("student", "t1", "baseline", 0, {"a": 0.2, "b": 0.6}, 1)
        + _rows("student", "t1", "baseline", 1, {"a": 0.4, "b": 0.8}, 2)
    )
    s = summarise(long)
    assert s[["stage", "method"]].values.tolist() == [["teacher", "teacher"],
                                                     ["student", "baseline"]]
    student = s.iloc[1]
    # per case over seeds: a = 0.3, b = 0.7 -> n = 2 patients (not 4 rows), mean 0.5
    assert student["n"] == 2
    assert student["mean"] == pytest.approx(0.5)
    assert student["sd"] == pytest.approx(math.sqrt(((0.3 - 0.5) ** 2 + (0.7 - 0.5) ** 2) / 1))
    assert student["median"] == pytest.approx(0.5)


def test_nan_values_are_excluded_and_counted() -> None:
    long = pd.DataFrame(_rows("teacher", "all", "teacher", 0, {"a": 0.5, "b": np.nan, "c": 1.0},
                              0))
    row = summarise(long).iloc[0]
    assert row["n"] == 2 and row["n_excluded"] == 1 and row["mean"] == pytest.approx(0.75)


def test_metric_means_for_mlflow() -> None:
    per_case = pd.DataFrame({
        "case": ["a", "b", "a", "b"], "region": ["WT", "WT", "ET", "ET"],
        "metric": ["dice"] * 4, "value": [0.8, 0.6, 0.5, np.nan],
    })
    means = metric_means(per_case)
    assert means == pytest.approx({"test/dice/WT": 0.7, "test/dice/ET": 0.5,
                                   "test/dice/mean": 0.6})


def test_markdown_has_one_row_per_model() -> None:
    long = pd.DataFrame(_rows("teacher", "all", "teacher", 0, {"a": 0.9, "b": 0.7}, 0)
                        + _rows("student", "t1", "baseline", 0, {"a": 0.2, "b": 0.6}, 1))
    md = comparison_markdown(summarise(long))
    assert "| teacher (all) | 0.800 ± 0.141 (0.800) | 0.800 |" in md
    assert "| t1 · baseline | 0.400 ± 0.283 (0.400) | 0.400 |" in md


def test_paired_markdown_marks_significant_rows() -> None:
    from kdseg.report.stats import compare_to_reference
    from kdseg.report.tables import paired_markdown

    cases = {f"c{i}": 0.1 * i for i in range(8)}
    long = pd.DataFrame(
        _rows("student", "t1", "baseline", 0, cases, 0)
        + _rows("student", "t1", "better", 0, {c: v + 0.1 for c, v in cases.items()}, 1)
        + _rows("student", "t1", "same", 0, cases, 2))
    md = paired_markdown(compare_to_reference(long, n_boot=200))
    assert "**Δ DICE vs baseline**" in md
    better = next(line for line in md.splitlines() if line.startswith("| t1 · better"))
    same = next(line for line in md.splitlines() if line.startswith("| t1 · same"))
    # exact Wilcoxon p for 8 positive differences is 2/256; Holm over the 2 rows doubles it
    assert "+0.100 [+0.100, +0.100]" in better and "p=0.016*" in better
    assert "+0.000" in same and "*" not in same


def test_collect_metrics_refuses_runs_evaluated_with_different_rules(tmp_path) -> None:
    import pytest
    import yaml

    from kdseg.report.tables import collect_metrics

    runs = []
    for i, rule in enumerate(["brats", "nan"]):
        run = tmp_path / f"run{i}"
        run.mkdir()
        (run / "run_config.yaml").write_text(yaml.safe_dump(
            {"stage": "student", "subset": "t1", "method": {"name": f"m{i}"}, "fold": 0,
             "seed": 0}))
        pd.DataFrame({"case": ["007"], "region": ["WT"], "metric": ["dice"], "value": [0.5],
                      "empty_state": ["none"], "empty_rule": [rule],
                      "nsd_tolerance_mm": [1.0]}).to_csv(run / "metrics_per_case.csv",
                                                        index=False)
        runs.append(run)
    assert collect_metrics(runs[:1])["case"].tolist() == ["007"]  # ids stay strings
    with pytest.raises(ValueError, match=r"different empty_rule values \['brats', 'nan'\]"):
        collect_metrics(runs)
