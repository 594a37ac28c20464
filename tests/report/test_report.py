"""Report helpers: choice of the overlay cases and student, the MLflow summary counts."""

from __future__ import annotations

import pandas as pd

from kdseg.report.overlays import best_student, pick_cases


def _long(diffs: dict[str, float]) -> pd.DataFrame:
    rows = []
    for i, (case, d) in enumerate(diffs.items()):
        for method, value in (("baseline", 0.5), ("kd", 0.5 + d)):
            for region in ("WT", "TC"):
                rows.append({"stage": "student", "subset": "flair", "method": method,
                             "seed": 0, "case": case, "region": region, "metric": "dice",
                             "value": value + 0.001 * i})
    return pd.DataFrame(rows)


def test_cases_span_lowest_median_and_highest_difference() -> None:
    long = _long({"a": 0.3, "b": -0.2, "c": 0.0, "d": 0.1, "e": -0.05})
    # sorted by Δ: b (-0.2), e (-0.05), c (0), d (0.1), a (0.3) -> indices 0, 2, 4
    assert pick_cases(long, "flair", "kd", 3) == ["b", "c", "a"]
    assert pick_cases(long, "flair", "kd", 10) == ["b", "e", "c", "d", "a"]
    assert pick_cases(long, "flair", None, 2) == ["a", "e"]  # by baseline Dice: lowest, highest


def test_best_student_by_mean_median_difference() -> None:
    paired = pd.DataFrame({"subset": ["t1", "t1", "flair", "flair"],
                           "method": ["kd", "kd", "kd", "kd"], "region": ["WT", "TC"] * 2,
                           "metric": "dice", "median_diff": [0.1, 0.3, 0.25, 0.05]})
    assert best_student(paired, _long({"a": 0.0})) == ("t1", "kd")  # 0.2 > 0.15
    assert best_student(paired.iloc[0:0], _long({"a": 0.0})) == ("flair", None)


def test_significance_counts_follow_each_metrics_direction() -> None:
    from kdseg.report.mlflow_summary import significance_counts, summary_run_key

    paired = pd.DataFrame({"metric": ["dice", "dice", "dice", "hd95", "hd95"],
                           "median_diff": [0.1, -0.2, 0.3, 5.0, -2.0],
                           "significant": [True, True, False, True, True]})
    counts = significance_counts(paired)
    assert counts == {"summary/dice/comparisons": 3.0, "summary/dice/significant_better": 1.0,
                      "summary/dice/significant_worse": 1.0, "summary/hd95/comparisons": 2.0,
                      "summary/hd95/significant_better": 1.0,  # -2 mm is better
                      "summary/hd95/significant_worse": 1.0}
    assert significance_counts(paired.iloc[0:0]) == {}
    key = summary_run_key("ds", ["b", "a"])
    assert key == summary_run_key("ds", ["a", "b"]) and key.startswith("ds/summary/")


def test_best_student_and_cases_without_a_baseline_or_any_pair() -> None:
    long = _long({"a": 0.1, "b": 0.2})
    nan_paired = pd.DataFrame({"subset": ["flair"], "method": ["kd"], "region": ["WT"],
                               "metric": ["dice"], "median_diff": [float("nan")]})
    assert best_student(nan_paired, long) == ("flair", None)
    assert best_student(nan_paired, long.iloc[0:0]) == (None, None)
    no_baseline = long[long["method"] != "baseline"]
    assert pick_cases(no_baseline, "flair", None, 1) == ["a"]  # by the only student's Dice
    assert pick_cases(no_baseline, "flair", "kd", 5) == ["a", "b"]
    assert pick_cases(long.iloc[0:0], "flair", None, 3) == []
