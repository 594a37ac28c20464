"""Choice of the overlay figure's student and cases (pure table logic, no images)."""

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
