"""Paired statistics: each distillation method against a reference (the baseline student, or
the full-modality teacher as the upper reference).

The unit is the patient. For one (subset, region, metric), a method's per-case values (seeds,
and the single fold that predicted the case, averaged per case first) are paired with the
reference's on the case id; cases where either side is NaN are dropped. On the differences
``method − reference`` we report the median and mean, a case-resampling percentile bootstrap CI,
the two-sided Wilcoxon signed-rank p-value, the matched-pairs rank-biserial correlation and a
Holm-adjusted p-value.

The sign is never flipped: a positive difference is *better* for Dice but *worse* for HD95
(smaller distances are better).

All functions taking ``diffs`` treat NaN entries as missing pairs and drop them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

FAMILIES: tuple[str, ...] = ("subset_region", "global")
"""Holm families for :func:`compare_to_reference`.

``"subset_region"``: all methods x metrics within one (subset, region). ``"global"``: every row.
"""

ALPHA = 0.05
"""Level at which a Holm-adjusted p-value is called significant."""

MIN_PAIRS_WILCOXON = 6
"""Fewest pairs for which :func:`wilcoxon_p` returns a p-value.

With n pairs the smallest two-sided p-value the signed-rank test can reach is ``2 / 2**n``:
0.0625 for n = 5, so below 6 pairs no outcome could be significant at 0.05.
"""

STATISTICS: tuple[str, ...] = ("median", "mean")

TEACHER = "teacher"
"""Method name of the full-modality teacher's rows; :func:`compare_to_reference` accepts it as
the reference (the upper bound a student is compared against)."""

_KEYS = ["subset", "method", "region", "metric"]
_COLUMNS = ["subset", "method", "reference", "region", "metric", "n", "median_method",
            "median_reference", "median_diff", "mean_diff", "ci_low", "ci_high", "p_wilcoxon",
            "rank_biserial", "p_holm", "significant", "family"]
_HOLM_COLUMNS = ("p_holm", "significant")


def _clean(diffs: np.ndarray | Sequence[float]) -> np.ndarray:
    """1-D float array of ``diffs`` without NaN entries."""
    d = np.asarray(diffs, dtype=np.float64).ravel()
    return d[~np.isnan(d)]


def _per_case(long: pd.DataFrame) -> dict[tuple, pd.Series]:
    """Values per case for each (subset, method, region, metric), indexed by case.

    The teacher's rows are keyed ``(<all modalities>, "teacher", region, metric)``.

    Rows of one case (its seeds, and the one fold that predicted it) are averaged first; NaN
    rows are skipped within a case (as in :func:`kdseg.report.tables.summarise`), so a case is
    NaN only if all its rows are.
    """
    means = long.groupby([*_KEYS, "case"], sort=False)["value"].mean()
    return {key: group.droplevel(_KEYS) for key, group in means.groupby(level=_KEYS, sort=False)}


def _values(per_case: dict[tuple, pd.Series], key: tuple) -> pd.Series:
    """Per-case values of ``key``; an empty series if the combination has no rows."""
    empty = pd.Series(dtype=np.float64, index=pd.Index([], name="case"))
    return per_case.get(key, empty)


def _pair(method_values: pd.Series, reference_values: pd.Series) -> pd.DataFrame:
    """Inner join two case-indexed series; drop cases where either is NaN."""
    paired = pd.concat({"method_value": method_values, "reference_value": reference_values},
                       axis=1, join="inner").dropna()
    paired.index.name = "case"
    paired = paired.reset_index()
    paired["diff"] = paired["method_value"] - paired["reference_value"]
    return paired[["case", "method_value", "reference_value", "diff"]]


def paired_differences(long: pd.DataFrame, method: str, reference: str, subset: str,
                       region: str, metric: str) -> pd.DataFrame:
    """Per-case pairs of ``method`` vs ``reference`` for one (subset, region, metric).

    Parameters
    ----------
    long
        Per-case table with columns stage, subset, method, fold, seed, case, region, metric,
        value. Teacher rows are ignored.

    Returns
    -------
    pd.DataFrame
        Columns case, method_value, reference_value, diff (= method − reference); one row per
        case present for both with neither value NaN, after averaging seeds per case.
    """
    per_case = _per_case(long)
    return _pair(_values(per_case, (subset, method, region, metric)),
                 _values(per_case, (subset, reference, region, metric)))


def paired_difference_table(long: pd.DataFrame, reference: str = "baseline") -> pd.DataFrame:
    """Every per-case ``method − reference`` difference of the students, in one pass.

    The same numbers as :func:`paired_differences` for each (subset, method, region, metric)
    (seeds averaged per case, NaN pairs dropped), computed with one group-by instead of one per
    combination; the figures use it.

    Returns:
        Columns subset, method, region, metric, case, diff; no ``reference`` rows.
    """
    columns = ["subset", "method", "region", "metric", "case", "diff"]
    students = long[long["stage"] != "teacher"]
    if reference not in set(students["method"]):
        return pd.DataFrame(columns=columns)
    keys = ["subset", "region", "metric", "case"]
    means = students.groupby([*keys, "method"], sort=False)["value"].mean().unstack("method")
    diffs = means.drop(columns=reference).sub(means[reference], axis=0)
    out = diffs.reset_index().melt(id_vars=keys, var_name="method", value_name="diff")
    return out.dropna(subset=["diff"])[columns].reset_index(drop=True)


def bootstrap_ci(diffs: np.ndarray | Sequence[float], statistic: str = "median",
                 n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the median (or mean) of paired differences.

    Cases are resampled with replacement (each difference is one patient's pair, so the pairing
    is kept). ``numpy.random.default_rng(seed)`` makes the interval reproducible.

    Returns
    -------
    tuple of float
        ``(low, high)``; ``(nan, nan)`` for no pairs, ``(d, d)`` for a single pair.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; choose one of {list(STATISTICS)}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    d = _clean(diffs)
    if d.size == 0:
        return (np.nan, np.nan)
    if d.size == 1:
        return (float(d[0]), float(d[0]))
    rng = np.random.default_rng(seed)
    samples = d[rng.integers(0, d.size, size=(n_boot, d.size))]
    boot = np.median(samples, axis=1) if statistic == "median" else samples.mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [tail, 1.0 - tail])
    return (float(low), float(high))


def wilcoxon_p(diffs: np.ndarray | Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences.

    ``zero_method="pratt"`` rather than ``"wilcox"``: zero differences stay in the ranking
    (they take the lowest ranks but count for neither sign) instead of being dropped. With Dice,
    ties at exactly 0 are common (both models perfect on a case, or both given the same
    empty-mask value); ``"wilcox"`` would test only the cases that changed, so the test's sample
    would silently differ from the ``n`` patients reported, and the ranks would ignore that a
    small change is still larger than "no change" (Pratt, 1959). ``method="auto"``: exact
    p-value for n <= 50 without ties or zeros, exact permutation p-value for n <= 13 with ties
    or zeros, normal approximation otherwise.

    Returns
    -------
    float
        NaN for fewer than :data:`MIN_PAIRS_WILCOXON` pairs (no outcome could reach 0.05; this
        takes precedence), 1.0 if all differences are zero, else scipy's p-value.
    """
    d = _clean(diffs)
    if d.size < MIN_PAIRS_WILCOXON:
        return np.nan
    if not np.any(d):
        # scipy would divide by a zero variance here; no difference is no evidence at all.
        return 1.0
    result = stats.wilcoxon(d, zero_method="pratt", alternative="two-sided", method="auto")
    return float(result.pvalue)


def rank_biserial(diffs: np.ndarray | Sequence[float]) -> float:
    """Matched-pairs rank-biserial correlation ``(R+ − R−) / (R+ + R−)`` in [−1, 1].

    ``R+`` / ``R−`` are the sums of the ranks of ``|d|`` (average ranks for ties) over the
    positive / negative differences; zeros are left out of the ranking (Kerby's simple
    difference formula), so the effect size describes the cases that changed while ``n`` and the
    Pratt p-value still account for the zeros.

    Returns
    -------
    float
        NaN for no pairs, 0.0 if all differences are zero.
    """
    d = _clean(diffs)
    if d.size == 0:
        return np.nan
    d = d[d != 0]
    if d.size == 0:
        return 0.0
    ranks = stats.rankdata(np.abs(d), method="average")
    r_plus, r_minus = ranks[d > 0].sum(), ranks[d < 0].sum()
    return float((r_plus - r_minus) / (r_plus + r_minus))


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (statsmodels ``multipletests(method="holm")``).

    NaN entries come back as NaN and do not count towards the family size (statsmodels would
    propagate them). With the m valid p-values sorted ascending,
    ``p_adj(i) = max_{j <= i} min(1, (m − j + 1) p(j))``, so adjusted values are >= the raw
    ones, <= 1 and in the same order as the raw ones. Note: statsmodels' *default* method is
    Holm–Šidák, not Holm; the method is named explicitly here.
    """
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=np.float64).ravel()
    valid = ~np.isnan(p)
    q = p[valid]
    if np.any((q < 0) | (q > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    out = np.full(p.shape, np.nan)
    if q.size:
        out[valid] = multipletests(q, alpha=ALPHA, method="holm")[1]
    return out


def teacher_subset(long: pd.DataFrame) -> str:
    """The teacher's subset (all modalities) in ``long``; raise if there is no single one."""
    subsets = sorted(set(long.loc[long["stage"] == "teacher", "subset"]))
    if len(subsets) != 1:
        raise ValueError(f"expected the rows of one teacher subset, found {subsets or 'none'}")
    return subsets[0]


def compare_to_reference(long: pd.DataFrame, reference: str = "baseline",
                         family: str = "subset_region", n_boot: int = 2000,
                         seed: int = 0) -> pd.DataFrame:
    """One row per student subset x compared method x region x metric.

    ``reference`` is either a student method (normally ``"baseline"``): every *other* method of
    a subset is paired with it on the cases of that subset; or :data:`TEACHER`: *every* student
    method, the baseline included, is paired with the full-modality teacher's values of the same
    cases (the upper reference: how much of the teacher's accuracy a student recovers).

    Subsets, methods, regions and metrics appear in the order of ``long``.
    ``median_method`` / ``median_reference`` are medians over the paired cases only, so they,
    the differences and ``n`` refer to the same patients. ``diff`` is always method − reference
    (positive = better Dice, worse HD95). Holm adjusts over the ``family`` (one of
    :data:`FAMILIES`); ``significant`` is ``p_holm < ALPHA`` (False where p is NaN).

    Raises
    ------
    ValueError
        For an unknown ``family``, a subset with other methods but no ``reference`` rows, or
        ``reference="teacher"`` without exactly one teacher subset.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {list(FAMILIES)}")
    per_case = _per_case(long)
    students = long[long["stage"] != "teacher"]
    ref_subset = teacher_subset(long) if reference == TEACHER else None
    rows = []
    for subset, in_subset in students.groupby("subset", sort=False):
        methods = [m for m in dict.fromkeys(in_subset["method"]) if m != reference]
        if not methods:
            continue
        if ref_subset is None and reference not in set(in_subset["method"]):
            raise ValueError(f"subset {subset!r} has no {reference!r} rows to compare against")
        regions = list(dict.fromkeys(in_subset["region"]))
        metrics = list(dict.fromkeys(in_subset["metric"]))
        for method in methods:
            for region in regions:
                for metric in metrics:
                    ref_key = (ref_subset or subset, reference, region, metric)
                    paired = _pair(_values(per_case, (subset, method, region, metric)),
                                   _values(per_case, ref_key))
                    rows.append({"subset": subset, "method": method, "reference": reference,
                                 "region": region, "metric": metric,
                                 **_pair_statistics(paired, n_boot, seed), "family": family})
    table = pd.DataFrame(rows, columns=[c for c in _COLUMNS if c not in _HOLM_COLUMNS])
    if family == "global":
        table["p_holm"] = holm(table["p_wilcoxon"].to_numpy())
    else:
        table["p_holm"] = (table.groupby(["subset", "region"], sort=False)["p_wilcoxon"]
                           .transform(lambda p: holm(p.to_numpy())).astype(np.float64))
    table["significant"] = table["p_holm"].lt(ALPHA)
    return table[_COLUMNS]


def _pair_statistics(paired: pd.DataFrame, n_boot: int, seed: int) -> dict[str, float | int]:
    """The per-row numbers of :func:`compare_to_reference` for one :func:`_pair` table."""
    d = paired["diff"].to_numpy()
    ci_low, ci_high = bootstrap_ci(d, n_boot=n_boot, seed=seed)

    def median(values: np.ndarray) -> float:
        return float(np.median(values)) if values.size else np.nan

    return {"n": int(d.size), "median_method": median(paired["method_value"].to_numpy()),
            "median_reference": median(paired["reference_value"].to_numpy()),
            "median_diff": median(d), "mean_diff": float(np.mean(d)) if d.size else np.nan,
            "ci_low": ci_low, "ci_high": ci_high, "p_wilcoxon": wilcoxon_p(d),
            "rank_biserial": rank_biserial(d)}
