"""BraTS-style rank-then-aggregate: golden values by hand and properties."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdseg.report.ranking import ALL_SUBSETS, bootstrap_ranks, case_ranks, rank_methods


def _long(values: dict[tuple[str, str, str, str], float], subset: str = "t1") -> pd.DataFrame:
    """``{(method, case, region, metric): value}`` -> student long rows of one subset."""
    return pd.DataFrame([{"stage": "student", "subset": subset, "method": m, "fold": 0,
                          "seed": 0, "case": c, "region": r, "metric": k, "value": v}
                         for (m, c, r, k), v in values.items()])


def test_golden_ranking_by_hand() -> None:
    # Dice (higher better) and HD95 (lower better) on two cases; C has no Dice for case b.
    #   case a  Dice: A .9, B .8, C .8 -> A1 B2 C2 (ties share the best rank)
    #           HD95: A 5,  B 3,  C 3  -> B1 C1 A3
    #   case b  Dice: A .5, B .7, C NaN -> B1 A2 C3 (missing ranks last)
    #           HD95: A 2,  B 4,  C 1  -> C1 A2 B3
    #   case ranks a: A 2, B 1.5, C 1.5;  b: A 2, B 2, C 2
    #   scores: A 2.0, B 1.75, C 1.75 -> ranks B 1, C 1, A 3
    v = {("A", "a", "WT", "dice"): .9, ("B", "a", "WT", "dice"): .8, ("C", "a", "WT", "dice"): .8,
         ("A", "a", "WT", "hd95"): 5, ("B", "a", "WT", "hd95"): 3, ("C", "a", "WT", "hd95"): 3,
         ("A", "b", "WT", "dice"): .5, ("B", "b", "WT", "dice"): .7,
         ("C", "b", "WT", "dice"): np.nan,
         ("A", "b", "WT", "hd95"): 2, ("B", "b", "WT", "hd95"): 4, ("C", "b", "WT", "hd95"): 1}
    ranking, stability = rank_methods(_long(v), n_boot=50)
    got = ranking.set_index("method")
    assert got["score"].to_dict() == pytest.approx({"A": 2.0, "B": 1.75, "C": 1.75})
    assert got["rank"].to_dict() == {"A": 3, "B": 1, "C": 1}
    assert ranking["method"].tolist() == ["B", "C", "A"]  # best first, stable among ties
    assert set(ranking["subset"]) == {"t1"}  # one subset: no "all subsets" row
    freq = stability.groupby("method")["frequency"].sum()
    assert freq.to_numpy() == pytest.approx(1.0)  # each method's rank frequencies sum to 1


def test_case_ranks_orientation_and_nan() -> None:
    values = np.array([[[0.9]], [[0.1]], [[np.nan]]])  # (3 methods, 1 case, 1 criterion)
    assert case_ranks(values)[:, 0].tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="shape"):
        case_ranks(np.zeros((2, 2)))


def test_dominant_method_is_stably_first_and_overall_row() -> None:
    rng = np.random.default_rng(0)
    v = {}
    for subset_offset, subset in enumerate(["t1", "flair"]):
        for c in range(10):
            base = rng.uniform(0.2, 0.6)
            v[(subset, "good", f"c{c}")] = base + 0.2 + 0.01 * subset_offset
            v[(subset, "baseline", f"c{c}")] = base
    long = pd.concat([_long({(m, c, "WT", "dice"): x for (s, m, c), x in v.items() if s == sub},
                            subset=sub) for sub in ["t1", "flair"]])
    ranking, _ = rank_methods(long, metrics=["dice"], n_boot=200)
    assert ranking["subset"].tolist() == ["t1", "t1", "flair", "flair", ALL_SUBSETS, ALL_SUBSETS]
    first = ranking[ranking["rank"] == 1]
    assert set(first["method"]) == {"good"}
    assert first["p_first"].tolist() == [1.0, 1.0, 1.0]
    assert ranking["kendall_tau_median"].tolist() == pytest.approx([1.0] * 6)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=2, max_size=12))
def test_identical_methods_tie_for_first(values: list[float]) -> None:
    v = {}
    for i, x in enumerate(values):
        for m in ("A", "B"):
            v[(m, f"c{i}", "WT", "dice")] = x
    ranking, _ = rank_methods(_long(v), metrics=["dice"], n_boot=20)
    assert ranking["rank"].tolist() == [1, 1]
    assert ranking["p_first"].tolist() == [1.0, 1.0]


def test_bootstrap_ranks_reproducible_and_validated() -> None:
    cr = np.array([[1.0, 2.0, 1.0], [2.0, 1.0, 2.0]])
    a, b = bootstrap_ranks(cr, 30, seed=3), bootstrap_ranks(cr, 30, seed=3)
    assert (a == b).all() and a.shape == (30, 2)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ranks(cr, 0, seed=0)


def test_unknown_ranking_metric_and_no_students() -> None:
    long = _long({("A", "a", "WT", "dice"): 0.5, ("B", "a", "WT", "dice"): 0.4})
    with pytest.raises(ValueError, match="nsd"):
        rank_methods(long, metrics=["dice", "nsd"])
    ranking, stability = rank_methods(long.iloc[0:0], n_boot=5)
    assert ranking.empty and stability.empty
