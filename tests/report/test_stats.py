"""Paired statistics vs the baseline: golden values by hand, scipy cross-checks, properties."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from kdseg.report.stats import (
    bootstrap_ci,
    compare_to_reference,
    holm,
    paired_difference_table,
    paired_differences,
    rank_biserial,
    wilcoxon_p,
)

FINITE = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)
PVALUE = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def _row(subset: str, method: str, case: str, value: float, seed: int = 0, region: str = "WT",
         metric: str = "dice", stage: str = "student") -> dict:
    return {"stage": stage, "subset": subset, "method": method, "fold": 0, "seed": seed,
            "case": case, "region": region, "metric": metric, "value": value}


# --- paired_differences ---------------------------------------------------------------------

def test_seeds_are_averaged_per_case_and_nan_cases_dropped() -> None:
    long = pd.DataFrame([
        _row("t1", "baseline", "a", 0.2, seed=0), _row("t1", "baseline", "a", 0.4, seed=1),
        _row("t1", "baseline", "b", 0.5), _row("t1", "baseline", "c", np.nan),
        _row("t1", "baseline", "d", 0.1),
        _row("t1", "kd", "a", 0.5, seed=0), _row("t1", "kd", "a", 0.7, seed=1),
        _row("t1", "kd", "b", np.nan), _row("t1", "kd", "c", 0.9),
        # e: no baseline row -> not paired; the teacher and another subset are never used
        _row("t1", "kd", "e", 0.9),
        _row("all", "teacher", "a", 0.99, stage="teacher"), _row("t2", "baseline", "a", 0.0),
    ])
    pairs = paired_differences(long, "kd", "baseline", "t1", "WT", "dice")
    assert list(pairs.columns) == ["case", "method_value", "reference_value", "diff"]
    # a: kd (0.5 + 0.7) / 2 = 0.6, baseline (0.2 + 0.4) / 2 = 0.3 -> one pair, not two;
    # b and c are NaN on one side; d and e have one side only.
    assert pairs["case"].tolist() == ["a"]
    assert pairs.loc[0, "method_value"] == pytest.approx(0.6)
    assert pairs.loc[0, "reference_value"] == pytest.approx(0.3)
    assert pairs.loc[0, "diff"] == pytest.approx(0.3)


def test_paired_differences_of_an_absent_method_is_empty() -> None:
    long = pd.DataFrame([_row("t1", "baseline", "a", 0.2)])
    pairs = paired_differences(long, "kd", "baseline", "t1", "WT", "dice")
    assert pairs.empty
    assert list(pairs.columns) == ["case", "method_value", "reference_value", "diff"]


# --- bootstrap_ci ---------------------------------------------------------------------------

def test_bootstrap_ci_contains_the_median_and_is_reproducible() -> None:
    d = np.random.default_rng(3).normal(0.05, 0.1, size=30)
    low, high = bootstrap_ci(d, seed=7)
    assert low < np.median(d) < high
    assert bootstrap_ci(d, seed=7) == (low, high)
    assert bootstrap_ci(d.tolist(), seed=7) == (low, high)
    mean_low, mean_high = bootstrap_ci(d, statistic="mean", seed=7)
    assert mean_low < np.mean(d) < mean_high
    # the seed is really used (the median's bootstrap quantiles are too discrete to show it)
    assert bootstrap_ci(d, statistic="mean", seed=8) != (mean_low, mean_high)


def test_bootstrap_ci_degenerate_sizes() -> None:
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    assert all(math.isnan(x) for x in bootstrap_ci([np.nan]))
    assert bootstrap_ci([0.25]) == (0.25, 0.25)
    assert bootstrap_ci([0.1] * 5) == pytest.approx((0.1, 0.1))


@pytest.mark.parametrize("kwargs", [{"statistic": "mode"}, {"level": 1.0}, {"n_boot": 0}])
def test_bootstrap_ci_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        bootstrap_ci([0.1, 0.2], **kwargs)


@settings(max_examples=50, deadline=None)
@given(st.lists(FINITE, min_size=0, max_size=30), st.integers(0, 2**32 - 1))
def test_bootstrap_ci_low_not_above_high(diffs: list[float], seed: int) -> None:
    low, high = bootstrap_ci(diffs, n_boot=200, seed=seed)
    if diffs:
        assert low <= high
        assert min(diffs) <= low and high <= max(diffs)


# --- wilcoxon_p -----------------------------------------------------------------------------

def test_wilcoxon_golden_value_by_hand() -> None:
    # d = [1, -2, 3, 4, 0, 5, 6], Pratt: |d| ranked with the zero -> 0:1, 1:2, 2:3, ..., 6:7.
    # R- = 3 (the -2). Under H0 each non-zero rank {2..7} is + or - with prob 1/2 (64 ways);
    # R- <= 3 for {}, {2}, {3}: 3/64. Two-sided p = 2 * 3/64 = 0.09375.
    assert wilcoxon_p([1, -2, 3, 4, 0, 5, 6]) == pytest.approx(0.09375)


@pytest.mark.parametrize("diffs", [
    np.random.default_rng(0).normal(0.03, 0.1, size=20),                       # exact
    np.r_[np.random.default_rng(1).normal(0.03, 0.1, size=8), 0.0, 0.0],       # zeros
    np.random.default_rng(2).normal(0.0, 1.0, size=60),                        # normal approx
])
def test_wilcoxon_matches_scipy_pratt(diffs: np.ndarray) -> None:
    expected = stats.wilcoxon(diffs, zero_method="pratt", method="auto").pvalue
    assert wilcoxon_p(diffs) == pytest.approx(expected, rel=1e-12)


def test_wilcoxon_degenerate_cases_are_defined() -> None:
    assert wilcoxon_p(np.zeros(8)) == 1.0
    assert math.isnan(wilcoxon_p([0.1, 0.2, 0.3, 0.4, 0.5]))  # n = 5: min p 0.0625
    assert math.isnan(wilcoxon_p(np.zeros(5)))                # too few pairs wins
    assert math.isnan(wilcoxon_p([]))
    # NaN pairs are dropped before counting
    assert math.isnan(wilcoxon_p([0.1, 0.2, 0.3, 0.4, 0.5, np.nan]))
    assert wilcoxon_p([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, np.nan]) == pytest.approx(2 / 64)


# --- rank_biserial --------------------------------------------------------------------------

def test_rank_biserial_golden_value_by_hand() -> None:
    # d = [1, -2, 3, 4, 0, 5, 6]: drop the zero, rank |d| = 1..6 -> R+ = 1+3+4+5+6 = 19,
    # R- = 2, r = (19 - 2) / 21 = 17/21.
    assert rank_biserial([1, -2, 3, 4, 0, 5, 6]) == pytest.approx(17 / 21)
    # ties get average ranks: |d| = [1, 1, 2] -> ranks 1.5, 1.5, 3; R+ = 4.5, R- = 1.5 -> 0.5
    assert rank_biserial([1, -1, 2]) == pytest.approx(0.5)
    assert rank_biserial([0.1] * 4) == 1.0
    assert rank_biserial(np.zeros(4)) == 0.0
    assert math.isnan(rank_biserial([]))


@settings(max_examples=50, deadline=None)
@given(st.lists(FINITE, min_size=1, max_size=40))
def test_rank_biserial_bounded_and_antisymmetric(diffs: list[float]) -> None:
    d = np.asarray(diffs)
    r = rank_biserial(d)
    assert -1.0 <= r <= 1.0
    assert rank_biserial(-d) == pytest.approx(-r, abs=1e-12)


# --- holm -----------------------------------------------------------------------------------

def _holm_by_definition(p: list[float]) -> list[float]:
    """Plain-Python Holm: p_adj(i) = max_{j <= i} min(1, (m - j + 1) p(j)), NaN passed through
    (an independent check of the statsmodels call inside ``holm``)."""
    valid = sorted((v, i) for i, v in enumerate(p) if not math.isnan(v))
    m, out, running = len(valid), [math.nan] * len(p), 0.0
    for j, (v, i) in enumerate(valid):
        running = max(running, min(1.0, (m - j) * v))
        out[i] = running
    return out


def test_holm_golden_value_by_hand() -> None:
    # valid m = 3, sorted 0.01, 0.03, 0.04 -> 3*0.01 = 0.03, 2*0.03 = 0.06, 1*0.04 = 0.04
    # -> running max 0.03, 0.06, 0.06; NaN stays NaN and is not counted in m.
    adjusted = holm([0.01, 0.04, 0.03, np.nan])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, np.nan])
    assert holm([]).shape == (0,)
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])
    with pytest.raises(ValueError):
        holm([0.5, 1.5])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(PVALUE, st.just(math.nan)), min_size=1, max_size=20))
def test_holm_properties(p: list[float]) -> None:
    raw = np.asarray(p)
    adjusted = holm(p)
    np.testing.assert_array_equal(np.isnan(adjusted), np.isnan(raw))
    valid = ~np.isnan(raw)
    assert np.all(adjusted[valid] >= raw[valid])
    assert np.all(adjusted[valid] <= 1.0)
    np.testing.assert_allclose(adjusted, _holm_by_definition(p), rtol=1e-12)
    order = np.argsort(raw[valid], kind="stable")
    assert np.all(np.diff(adjusted[valid][order]) >= 0)


# --- compare_to_reference -------------------------------------------------------------------

@pytest.fixture
def long_table() -> pd.DataFrame:
    """2 subsets x {baseline, same (= baseline), better (= baseline + 0.1)} x 2 regions x
    2 metrics x 8 cases; baseline has two seeds per case; plus teacher rows."""
    rng = np.random.default_rng(0)
    rows = []
    for subset in ["t1", "flair"]:
        for region in ["WT", "TC"]:
            for metric in ["dice", "hd95"]:
                for case in [f"c{i}" for i in range(8)]:
                    v0, v1 = rng.uniform(0.3, 0.8, size=2)
                    mean = (v0 + v1) / 2
                    common = {"region": region, "metric": metric}
                    rows += [_row(subset, "baseline", case, v0, seed=0, **common),
                             _row(subset, "baseline", case, v1, seed=1, **common),
                             _row(subset, "same", case, mean, **common),
                             _row(subset, "better", case, mean + 0.1, **common),
                             _row("all", "teacher", case, 0.9, stage="teacher", **common)]
    return pd.DataFrame(rows)


def test_compare_to_reference_rows_and_values(long_table: pd.DataFrame) -> None:
    table = compare_to_reference(long_table, n_boot=500)
    assert list(table.columns) == [
        "subset", "method", "reference", "region", "metric", "n", "median_method",
        "median_reference", "median_diff", "mean_diff", "ci_low", "ci_high", "p_wilcoxon",
        "rank_biserial", "p_holm", "significant", "family"]
    # 2 subsets x 2 non-reference methods x 2 regions x 2 metrics; no teacher, no baseline row
    assert len(table) == 16
    assert set(table["subset"]) == {"t1", "flair"}
    assert set(table["method"]) == {"same", "better"}
    assert (table["reference"] == "baseline").all()
    assert (table["n"] == 8).all()   # seeds averaged: 8 patients, not 16 rows

    same = table[table["method"] == "same"]
    assert (same["median_diff"] == 0).all() and (same["mean_diff"] == 0).all()
    assert (same["p_wilcoxon"] == 1.0).all() and (same["rank_biserial"] == 0).all()
    assert (same["ci_low"] == 0).all() and (same["ci_high"] == 0).all()
    assert not same["significant"].any()

    better = table[table["method"] == "better"]
    np.testing.assert_allclose(better["median_diff"], 0.1)
    np.testing.assert_allclose(better["median_method"] - better["median_reference"], 0.1)
    # n = 8, all positive: exact two-sided p = 2 / 2**8 = 0.0078125; Holm over the 4 rows of a
    # (subset, region) family (2 methods x 2 metrics): 4 * 0.0078125 = 0.03125 < 0.05.
    np.testing.assert_allclose(better["p_wilcoxon"], 2 / 256)
    np.testing.assert_allclose(better["p_holm"], 4 * 2 / 256)
    assert better["significant"].all()
    assert (better["rank_biserial"] == 1.0).all()
    assert (better["ci_low"] <= 0.1 + 1e-12).all() and (better["ci_high"] >= 0.1 - 1e-12).all()
    assert (table["family"] == "subset_region").all()


def test_compare_to_reference_global_family_adjusts_over_all_rows(
        long_table: pd.DataFrame) -> None:
    local = compare_to_reference(long_table, n_boot=100)
    global_ = compare_to_reference(long_table, family="global", n_boot=100)
    np.testing.assert_array_equal(local["p_wilcoxon"], global_["p_wilcoxon"])
    better = global_[global_["method"] == "better"]
    # 16 rows: 8 at 2/256 -> 16 * 2/256 = 0.125 for the smallest, running max keeps 0.125
    np.testing.assert_allclose(better["p_holm"], 16 * 2 / 256)
    assert not better["significant"].any()
    assert (global_["family"] == "global").all()
    assert not np.allclose(local["p_holm"], global_["p_holm"])


def test_compare_to_reference_empty_pairs_and_validation(long_table: pd.DataFrame) -> None:
    long = long_table.copy()
    long.loc[(long["method"] == "better") & (long["subset"] == "t1"), "value"] = np.nan
    table = compare_to_reference(long, n_boot=100)
    gone = table[(table["method"] == "better") & (table["subset"] == "t1")]
    assert (gone["n"] == 0).all()
    assert gone[["median_diff", "ci_low", "p_wilcoxon", "rank_biserial", "p_holm"]]\
        .isna().all().all()
    assert not gone["significant"].any()

    with pytest.raises(ValueError, match="subset_region"):
        compare_to_reference(long_table, family="per_metric")
    no_baseline = long_table[~((long_table["subset"] == "t1")
                               & (long_table["method"] == "baseline"))]
    with pytest.raises(ValueError, match="t1"):
        compare_to_reference(no_baseline)


def test_compare_to_teacher_pairs_every_student_with_the_teachers_cases(
        long_table: pd.DataFrame) -> None:
    table = compare_to_reference(long_table, reference="teacher", n_boot=100)
    # every student method, the baseline included: 2 subsets x 3 methods x 2 regions x 2 metrics
    assert len(table) == 24
    assert set(table["method"]) == {"baseline", "same", "better"}
    assert (table["reference"] == "teacher").all() and (table["n"] == 8).all()
    np.testing.assert_allclose(table["median_reference"], 0.9)
    # the teacher is a constant 0.9 on every case, so median(d) = median(student) - 0.9 exactly
    np.testing.assert_allclose(table["median_diff"], table["median_method"] - 0.9, rtol=1e-12)
    better = table[table["method"] == "better"]
    same = table[table["method"] == "same"]
    # "better" = "same" + 0.1 on every case, so its differences to the teacher are shifted by 0.1
    np.testing.assert_allclose(better["mean_diff"].to_numpy(), same["mean_diff"].to_numpy() + 0.1)


def test_compare_to_teacher_needs_exactly_one_teacher(long_table: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="teacher subset"):
        compare_to_reference(long_table[long_table["stage"] != "teacher"], reference="teacher")
    two = long_table.copy()
    two.loc[two.index[-1], "subset"] = "other"
    with pytest.raises(ValueError, match="teacher subset"):
        compare_to_reference(two, reference="teacher")


def test_holm_golden_values_with_nan_and_empty_input() -> None:
    # Hand: sorted p 0.01, 0.02, 0.03, 0.04 (m = 4): 0.04, 0.06, 0.06 (max with 0.06), 0.06
    np.testing.assert_allclose(holm([0.03, 0.01, np.nan, 0.04, 0.02]),
                               [0.06, 0.04, np.nan, 0.06, 0.06])
    assert holm([]).size == 0


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=6, max_size=20),
       st.floats(min_value=-0.5, max_value=0.5).filter(lambda s: abs(s) > 1e-6))
def test_constant_shift_gives_a_zero_width_ci_at_the_shift(values: list[float],
                                                           shift: float) -> None:
    rows = []
    for i, v in enumerate(values):
        rows += [_row("t1", "baseline", f"c{i}", v), _row("t1", "kd", f"c{i}", v + shift)]
    table = compare_to_reference(pd.DataFrame(rows), n_boot=200)
    row = table.iloc[0]
    assert row["median_diff"] == pytest.approx(shift, abs=1e-9)
    assert row["ci_low"] == pytest.approx(shift, abs=1e-9)
    assert row["ci_high"] == pytest.approx(shift, abs=1e-9)
    assert abs(row["rank_biserial"]) == 1.0
    # every pair moves the same way: the exact two-sided p is 2 / 2**n; scipy computes it
    # exactly (by permutation when float rounding leaves tied |d|) up to n = 13 pairs and
    # approximates it above
    if len(values) <= 13:
        assert row["p_wilcoxon"] == pytest.approx(2 / 2 ** len(values))
    else:
        assert row["p_wilcoxon"] < 1e-3


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=15))
def test_a_method_against_itself_has_zero_effect(values: list[float]) -> None:
    rows = []
    for i, v in enumerate(values):
        rows += [_row("t1", "baseline", f"c{i}", v), _row("t1", "copy", f"c{i}", v)]
    row = compare_to_reference(pd.DataFrame(rows), n_boot=50).iloc[0]
    assert row["median_diff"] == 0 and row["ci_low"] == 0 and row["ci_high"] == 0
    assert row["rank_biserial"] == 0 and not row["significant"]
    assert row["p_wilcoxon"] == (1.0 if len(values) >= 6 else pytest.approx(np.nan, nan_ok=True))


def test_paired_difference_table_equals_paired_differences(long_table: pd.DataFrame) -> None:
    long = long_table.copy()
    long.loc[long.index[::7], "value"] = np.nan  # some missing pairs
    table = paired_difference_table(long)
    assert set(table["method"]) == {"same", "better"}
    for (subset, method, region, metric), rows in table.groupby(
            ["subset", "method", "region", "metric"]):
        expected = paired_differences(long, method, "baseline", subset, region, metric)
        got = rows.sort_values("case")
        assert got["case"].tolist() == expected.sort_values("case")["case"].tolist()
        np.testing.assert_allclose(got["diff"], expected.sort_values("case")["diff"])
    assert paired_difference_table(long, reference="nope").empty


def test_full_modality_student_and_teacher_share_a_subset_without_colliding() -> None:
    full = "flair+t1+t1ce+t2"  # `subsets: all` trains a student on the teacher's subset
    rows = []
    for i in range(8):
        rows += [_row(full, "teacher", f"c{i}", 0.9, stage="teacher"),
                 _row(full, "baseline", f"c{i}", 0.5 + 0.01 * i),
                 _row(full, "kd", f"c{i}", 0.6 + 0.01 * i)]
    long = pd.DataFrame(rows)
    vs_base = compare_to_reference(long, n_boot=50)
    assert vs_base["method"].tolist() == ["kd"] and vs_base["n"].tolist() == [8]
    np.testing.assert_allclose(vs_base["median_diff"], 0.1)
    vs_teacher = compare_to_reference(long, reference="teacher", n_boot=50)
    assert vs_teacher["method"].tolist() == ["baseline", "kd"]
    assert (vs_teacher["subset"] == full).all() and (vs_teacher["n"] == 8).all()
    np.testing.assert_allclose(vs_teacher["median_diff"], [0.535 - 0.9, 0.635 - 0.9])
