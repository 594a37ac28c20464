"""Tables shaped for a paper: the per-model results table and the literature-style subset table.

* :func:`results_table`: one row per model (teacher, then subset x method) and region: mean ± sd,
  median [IQR], and for students the paired Δ vs the baseline (median [95 % CI]) with its
  Holm-adjusted Wilcoxon p, significant rows marked.
* :func:`subset_table`: the layout of the missing-modality literature (RFNet, mmFormer,
  ProtoKD): one row per modality subset with ●/○ per modality, column blocks region x method,
  average rows per number of available modalities, the best method per row and region in bold.

Both return display tables of strings (see :mod:`kdseg.report.formats` for Markdown, LaTeX and
HTML rendering) and, for the subset table, the numeric table written to CSV.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from kdseg.report.formats import bold, number
from kdseg.report.ranking import LOWER_IS_BETTER

DIGITS = {"hd95": 1}
"""Decimals per metric in display tables (default 3)."""


def _digits(metric: str) -> int:
    return DIGITS.get(metric, 3)


def results_table(summary: pd.DataFrame, paired: pd.DataFrame | None, metric: str) -> pd.DataFrame:
    """Display table of ``metric`` for every model and region.

    Args:
        summary: output of :func:`kdseg.report.tables.summarise`.
        paired: output of :func:`kdseg.report.stats.compare_to_reference` vs the baseline
            (``None`` or empty when there is nothing to compare).
        metric: e.g. ``"dice"``.

    Returns:
        Columns ``subset, method, region, mean ± sd, median [IQR], n, Δ vs baseline [95 % CI],
        p (Holm), sig.``; Δ in bold and ``*`` in ``sig.`` where ``p_holm < 0.05``.
    """
    d = _digits(metric)
    rows = summary[summary["metric"] == metric]
    stats = pd.DataFrame() if paired is None else paired[paired["metric"] == metric]
    stats = stats.set_index(["subset", "method", "region"]) if not stats.empty else stats
    out = []
    for row in rows.itertuples():
        delta, p, sig = "—", "—", ""
        key = (row.subset, row.method, row.region)
        if row.stage == "student" and not stats.empty and key in stats.index:
            s = stats.loc[key]
            delta = (f"{number(s['median_diff'], d, True)} [{number(s['ci_low'], d, True)}, "
                     f"{number(s['ci_high'], d, True)}]")
            p = "–" if not np.isfinite(s["p_holm"]) else f"{s['p_holm']:.2g}"
            if s["significant"]:
                delta, sig = bold(delta), "*"
        out.append({
            "subset": row.subset, "method": row.method, "region": row.region,
            "mean ± sd": f"{number(row.mean, d)} ± {number(row.sd, d)}",
            "median [IQR]": f"{number(row.median, d)} [{number(row.q1, d)}, {number(row.q3, d)}]",
            "n": str(row.n), "Δ vs baseline [95 % CI]": delta, "p (Holm)": p, "sig.": sig,
        })
    return pd.DataFrame(out)


def subset_order(subsets: Sequence[str]) -> list[str]:
    """Subsets by number of modalities (singles -> pairs -> ... ), first-seen order within."""
    seen = list(dict.fromkeys(subsets))
    return sorted(seen, key=lambda s: (len(s.split("+")), seen.index(s)))


def student_means(summary: pd.DataFrame,
                  metric: str) -> tuple[list[str], list[str], list[str], pd.Series]:
    """``(subsets, methods, regions, means)`` of the students' rows of ``metric``.

    Subsets in :func:`subset_order`, methods and regions in first-seen order; ``means`` is the
    mean over cases indexed by (subset, method, region). Empty lists when there are no rows.
    """
    rows = summary[(summary["stage"] == "student") & (summary["metric"] == metric)]
    return (subset_order(rows["subset"]), list(dict.fromkeys(rows["method"])),
            list(dict.fromkeys(rows["region"])),
            rows.set_index(["subset", "method", "region"])["mean"])


def subset_table(summary: pd.DataFrame, metric: str,
                 modalities: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The literature-shaped table of mean ``metric`` per subset x region x method.

    Args:
        summary: output of :func:`kdseg.report.tables.summarise` (teacher rows are skipped).
        metric: the metric shown (``dice``, ``hd95``, ...).
        modalities: all modalities in display order (one ●/○ column each).

    Returns:
        ``(numeric, display)``. ``numeric``: one row per subset plus one ``mean (k modalities)``
        row per subset size present and ``mean (all subsets)``, columns ``row``, one 0/1 column
        per modality, then ``<region> · <method>`` means. ``display``: the same as strings with
        ●/○ and the best method of each region block in bold (highest; lowest for HD95).
    """
    subsets, methods, regions, means = student_means(summary, metric)
    if not subsets:
        raise ValueError(f"no student rows for metric {metric!r}")
    blocks = [(r, m) for r in regions for m in methods]
    value_columns = [f"{r} · {m}" for r, m in blocks]
    numeric_rows = []
    for subset in subsets:
        present = set(subset.split("+"))
        row = {"row": subset, **{mod: int(mod in present) for mod in modalities}}
        row.update({col: means.get((subset, m, r), np.nan)
                    for col, (r, m) in zip(value_columns, blocks, strict=True)})
        numeric_rows.append(row)
    numeric = pd.DataFrame(numeric_rows)
    sizes = numeric[list(modalities)].sum(axis=1)
    averages = []
    for size in sorted(set(sizes)):
        label = f"mean ({size} modalit{'y' if size == 1 else 'ies'})"
        averages.append({"row": label, **numeric.loc[sizes == size, value_columns].mean()})
    if len(set(sizes)) > 1:
        averages.append({"row": "mean (all subsets)", **numeric[value_columns].mean()})
    numeric = pd.concat([numeric, pd.DataFrame(averages)], ignore_index=True)

    lower = metric in LOWER_IS_BETTER
    display = pd.DataFrame({"subset": numeric["row"]})
    for mod in modalities:
        display[mod] = numeric[mod].map(lambda v: "" if pd.isna(v) else ("●" if v else "○"))
    for region in regions:
        cols = [f"{region} · {m}" for m in methods]
        block = numeric[cols].to_numpy(dtype=np.float64)
        with warnings.catch_warnings():  # an all-NaN row has no best entry (NaN), by design
            warnings.simplefilter("ignore", RuntimeWarning)
            best = np.nanmin(block, axis=1) if lower else np.nanmax(block, axis=1)
        for j, col in enumerate(cols):
            display[col] = [bold(number(v, _digits(metric))) if np.isfinite(v) and v == b and
                            len(methods) > 1 else number(v, _digits(metric))
                            for v, b in zip(block[:, j], best, strict=True)]
    return numeric, display
