"""BraTS-style rank-then-aggregate ranking of the student methods, with bootstrap stability.

For each modality subset the methods compete on the same test cases. Following the BraTS
challenge ranking (and challengeR's ``rankThenAggregate``):

1. for every case, region and metric the methods are ranked (1 = best; Dice, NSD, sensitivity
   and specificity higher is better, HD95 lower is better); ties share the lowest rank
   (``method="min"``), a missing or NaN value gets the worst rank (a method that produced no
   value for a case must not gain from it);
2. a method's *case rank* is the mean of its ranks over the regions and metrics of that case;
3. its *score* is the mean case rank over cases, and the final rank orders the scores.

The row ``subset = "all subsets"`` ranks the methods over every subset at once: case ranks are
averaged over the subsets first (each subset weighs the same), then over cases.

Stability: cases are resampled with replacement (``n_boot`` times, fixed seed) and the ranking
recomputed from the resampled case ranks, which is cheap because a case's ranks do not depend on
the other cases. Reported per method: the fraction of samples in which it ranked first, a 95 %
interval of its bootstrap rank, and the frequency of every rank (for the blob plot); per subset,
the median Kendall's tau between the full-data ranking and the bootstrap rankings.

Seeds are averaged per case first (the patient is the unit); teacher rows are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from kdseg.evaluation.metrics import HIGHER_IS_BETTER

ALL_SUBSETS = "all subsets"
"""``subset`` label of the ranking over every subset at once."""

LOWER_IS_BETTER: frozenset[str] = frozenset(
    metric for metric, higher in HIGHER_IS_BETTER.items() if not higher)
"""Metrics where a smaller value is better (HD95); every other metric ranks higher-is-better."""

RANKING_COLUMNS = ["subset", "method", "n_cases", "score", "rank", "p_first", "rank_low",
                   "rank_high", "kendall_tau_median"]
STABILITY_COLUMNS = ["subset", "method", "rank", "frequency"]


def case_ranks(values: np.ndarray) -> np.ndarray:
    """Per-case mean rank of each method.

    Args:
        values: shape ``(M, C, K)``: M methods, C cases, K (region, metric) criteria, already
            oriented so that *higher is better*; NaN = missing.

    Returns:
        ``(M, C)`` mean over the K criteria of the rank among the M methods (1 = best, ties
        ``min``, NaN ranked last).
    """
    if values.ndim != 3:
        raise ValueError(f"values must have shape (methods, cases, criteria), got {values.shape}")
    # rankdata ranks ascending; rank -value so the largest gets rank 1, NaN -> +inf -> last.
    keyed = np.where(np.isnan(values), np.inf, -values)
    ranks = stats.rankdata(keyed, method="min", axis=0)
    return ranks.mean(axis=2)


def aggregate(case_rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores (mean case rank over cases) and final ranks (1 = best, ties ``min``).

    Args:
        case_rank: ``(M, C)`` from :func:`case_ranks` (or averaged over subsets).
    """
    score = np.nanmean(case_rank, axis=1)
    return score, stats.rankdata(score, method="min")


def bootstrap_ranks(case_rank: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, M)`` final ranks recomputed on case-resampled copies of ``case_rank``."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    n_cases = case_rank.shape[1]
    picks = rng.integers(0, n_cases, size=(n_boot, n_cases))
    scores = np.nanmean(case_rank[:, picks], axis=2).T  # (n_boot, M)
    return stats.rankdata(scores, method="min", axis=1)


def _criteria_values(per_case: pd.DataFrame, methods: Sequence[str], cases: Sequence[str],
                     criteria: Sequence[tuple[str, str]]) -> np.ndarray:
    """``(M, C, K)`` higher-is-better values from the per-case table of one subset."""
    table = per_case.set_index(["method", "case", "region", "metric"])["value"]
    index = pd.MultiIndex.from_tuples(
        [(m, c, r, k) for m in methods for c in cases for r, k in criteria],
        names=["method", "case", "region", "metric"])
    values = table.reindex(index).to_numpy(dtype=np.float64)
    values = values.reshape(len(methods), len(cases), len(criteria))
    signs = np.array([-1.0 if metric in LOWER_IS_BETTER else 1.0 for _, metric in criteria])
    return values * signs


def _summarise(subset: str, methods: list[str], case_rank: np.ndarray, n_boot: int,
               seed: int) -> tuple[list[dict], list[dict]]:
    score, rank = aggregate(case_rank)
    boot = bootstrap_ranks(case_rank, n_boot, seed)
    if len(methods) > 1:
        taus = [stats.kendalltau(rank, b).statistic for b in boot]
        # tau is undefined when a ranking is one big tie (every method equal): NaN, not "stable"
        tau = float(np.nanmedian(taus)) if not np.all(np.isnan(taus)) else float("nan")
    else:
        tau = float("nan")  # one method: nothing to rank
    ranking, stability = [], []
    for i, method in enumerate(methods):
        ranking.append({
            "subset": subset, "method": method, "n_cases": case_rank.shape[1],
            "score": float(score[i]), "rank": int(rank[i]),
            "p_first": float(np.mean(boot[:, i] == 1)),
            "rank_low": float(np.percentile(boot[:, i], 2.5)),
            "rank_high": float(np.percentile(boot[:, i], 97.5)),
            "kendall_tau_median": tau,
        })
        counts = np.bincount(boot[:, i].astype(int), minlength=len(methods) + 1)[1:]
        stability += [{"subset": subset, "method": method, "rank": r + 1,
                       "frequency": counts[r] / n_boot} for r in range(len(methods))]
    return ranking, stability


def rank_methods(long: pd.DataFrame, metrics: Sequence[str] = ("dice", "hd95"),
                 n_boot: int = 1000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rank the student methods per subset and over all subsets (see the module docstring).

    Args:
        long: per-case long table (columns stage, subset, method, seed, case, region, metric,
            value, ...); teacher rows are ignored.
        metrics: metrics that enter the ranking; every region of each counts once.
        n_boot: bootstrap samples for the stability analysis.
        seed: seed of the case resampling.

    Returns:
        ``(ranking, stability)``: ranking has :data:`RANKING_COLUMNS` (rows sorted by subset in
        ``long`` order, then rank), stability has :data:`STABILITY_COLUMNS` (rank frequencies).
        Both are empty (with those columns) when there are no student rows.
    """
    students = long[(long["stage"] != "teacher") & long["metric"].isin(metrics)]
    ranking: list[dict] = []
    stability: list[dict] = []
    if students.empty:
        return pd.DataFrame(columns=RANKING_COLUMNS), pd.DataFrame(columns=STABILITY_COLUMNS)
    missing = sorted(set(metrics) - set(students["metric"]))
    if missing:
        raise ValueError(f"ranking metrics {missing} are not in the per-case table "
                         f"(present: {sorted(set(students['metric']))})")
    per_case = (students.groupby(["subset", "method", "case", "region", "metric"], sort=False)
                ["value"].mean().reset_index())
    methods = list(dict.fromkeys(per_case["method"]))
    cases = sorted(set(per_case["case"]))
    criteria = list(dict.fromkeys(zip(per_case["region"], per_case["metric"], strict=True)))
    by_subset = []
    for subset, rows in per_case.groupby("subset", sort=False):
        here = [m for m in methods if m in set(rows["method"])]
        subset_cases = sorted(set(rows["case"]))
        rank = case_ranks(_criteria_values(rows, here, subset_cases, criteria))
        r, s = _summarise(str(subset), here, rank, n_boot, seed)
        ranking += r
        stability += s
        frame = pd.DataFrame(rank, index=here, columns=subset_cases)
        by_subset.append(frame.reindex(index=methods, columns=cases))
    if len(by_subset) > 1:
        # Each subset weighs the same; a method absent from a subset is averaged over the others.
        overall = np.nanmean(np.stack([f.to_numpy() for f in by_subset]), axis=0)
        r, s = _summarise(ALL_SUBSETS, methods, overall, n_boot, seed)
        ranking += r
        stability += s
    table = pd.DataFrame(ranking, columns=RANKING_COLUMNS)
    # Within each subset (already in `long` order) best rank first.
    order = {s: i for i, s in enumerate(dict.fromkeys(table["subset"]))}
    table["_order"] = table["subset"].map(order)
    table = table.sort_values(["_order", "rank"], kind="stable").drop(columns="_order")
    return table.reset_index(drop=True), pd.DataFrame(stability, columns=STABILITY_COLUMNS)
