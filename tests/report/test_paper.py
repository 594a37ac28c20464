"""Paper-shaped tables and their renderings (Markdown, LaTeX booktabs, HTML)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kdseg.report import formats
from kdseg.report.paper import results_table, subset_order, subset_table
from kdseg.report.stats import compare_to_reference
from kdseg.report.tables import summarise


def _summary_rows(values: dict[tuple[str, str, str], float], metric: str = "dice") -> pd.DataFrame:
    """``{(subset, method, region): mean}`` -> a minimal summarise()-shaped table."""
    rows = [{"stage": "student", "subset": s, "method": m, "region": r, "metric": metric,
             "n": 4, "n_excluded": 0, "mean": v, "sd": 0.1, "median": v, "q1": v, "q3": v}
            for (s, m, r), v in values.items()]
    return pd.DataFrame(rows)


def test_subset_order_singles_then_pairs_then_full() -> None:
    subsets = ["flair+t1ce", "t1", "flair+t1+t1ce+t2", "t2", "t1+t1ce+t2", "flair"]
    assert subset_order(subsets) == ["t1", "t2", "flair", "flair+t1ce", "t1+t1ce+t2",
                                     "flair+t1+t1ce+t2"]


def test_subset_table_marks_presence_bold_best_and_averages() -> None:
    summary = _summary_rows({("t1", "baseline", "WT"): 0.2, ("t1", "kd", "WT"): 0.3,
                             ("flair", "baseline", "WT"): 0.6, ("flair", "kd", "WT"): 0.5,
                             ("flair+t1", "baseline", "WT"): 0.7, ("flair+t1", "kd", "WT"): 0.7})
    numeric, display = subset_table(summary, "dice", ["t1", "t1ce", "t2", "flair"])
    assert numeric["row"].tolist() == ["t1", "flair", "flair+t1", "mean (1 modality)",
                                       "mean (2 modalities)", "mean (all subsets)"]
    assert display.loc[0, ["t1", "t1ce", "t2", "flair"]].tolist() == ["●", "○", "○", "○"]
    assert display.loc[2, ["t1", "t1ce", "t2", "flair"]].tolist() == ["●", "○", "○", "●"]
    assert display.loc[0, "WT · kd"] == formats.bold("0.300")
    assert display.loc[0, "WT · baseline"] == "0.200"
    assert display.loc[1, "WT · baseline"] == formats.bold("0.600")
    assert display.loc[2, "WT · baseline"] == display.loc[2, "WT · kd"] == formats.bold("0.700")
    # mean (1 modality) of kd: (0.3 + 0.5) / 2
    assert numeric.loc[3, "WT · kd"] == pytest.approx(0.4)
    assert numeric.loc[5, "WT · baseline"] == pytest.approx(0.5)
    assert display.loc[3, "t1"] == ""  # average rows have no presence marks


def test_subset_table_hd95_bolds_the_lowest() -> None:
    summary = _summary_rows({("t1", "baseline", "WT"): 20.0, ("t1", "kd", "WT"): 10.0},
                            metric="hd95")
    _, display = subset_table(summary, "hd95", ["t1", "t2"])
    assert display.loc[0, "WT · kd"] == formats.bold("10.0")
    with pytest.raises(ValueError, match="no student rows"):
        subset_table(summary, "dice", ["t1", "t2"])


def test_results_table_marks_significant_deltas() -> None:
    rows = []
    for case in range(8):
        for method, value in (("baseline", 0.5 + 0.01 * case), ("kd", 0.7 + 0.01 * case)):
            rows.append({"stage": "student", "subset": "t1", "method": method, "fold": 0,
                         "seed": 0, "case": f"c{case}", "region": "WT", "metric": "dice",
                         "value": value, "row_order": 0 if method == "baseline" else 1})
    long = pd.DataFrame(rows)
    table = results_table(summarise(long), compare_to_reference(long, n_boot=100), "dice")
    assert table["method"].tolist() == ["baseline", "kd"]
    base, kd = table.iloc[0], table.iloc[1]
    assert base["Δ vs baseline [95 % CI]"] == "—" and base["sig."] == ""
    # every case improves by exactly 0.2: median 0.2, zero-width CI, p = 2/2^8 = 0.0078
    assert kd["Δ vs baseline [95 % CI]"] == formats.bold("+0.200 [+0.200, +0.200]")
    assert kd["p (Holm)"] == "0.0078" and kd["sig."] == "*"
    assert kd["mean ± sd"] == "0.735 ± 0.024"
    assert kd["median [IQR]"].startswith("0.735 [")


def test_renderings_share_cells_and_escape() -> None:
    table = pd.DataFrame({"method": ["logit_kd", "a|b"], "Δ": [formats.bold("+0.1 ± 2%"), "●"]})
    md = formats.to_markdown(table)
    assert "| logit_kd | **+0.1 ± 2%** |" in md and "a\\|b" in md
    tex = formats.to_latex(table, "Caption with under_score", "tab:x")
    for piece in (r"\toprule", r"\midrule", r"\bottomrule", r"logit\_kd",
                  r"\textbf{+0.1 $\pm$ 2\%}", r"$\bullet$", r"\label{tab:x}",
                  r"Caption with under\_score", r"$\Delta$"):
        assert piece in tex, piece
    html = formats.to_html(table)
    assert "<strong>+0.1 ± 2%</strong>" in html and "a|b" in html
    plain = formats.plain_csv_frame(table)
    assert plain.loc[0, "Δ"] == "+0.1 ± 2%"
    assert np.all(plain.columns == table.columns)


def test_wide_latex_tables_are_scaled_to_the_text_width() -> None:
    narrow = formats.to_latex(pd.DataFrame({"a": ["x"]}), "c", "tab:n")
    wide = formats.to_latex(pd.DataFrame({f"m{i} · WT": ["—"] for i in range(12)}), "c", "tab:w")
    assert "resizebox" not in narrow
    assert "\\resizebox{\\textwidth}{!}{%\n\\begin{tabular}" in wide
    assert wide.count("{") == wide.count("}")  # the box closes after the tabular
    assert "m0 $\\cdot$ WT" in wide and "---" in wide
