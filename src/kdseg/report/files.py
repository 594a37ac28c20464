"""Names of the files the ``summarize`` and ``report`` stages write.

Kept in an import-light module: the Snakefile declares these outputs at parse time and must not
import pandas, scipy or matplotlib for it.
"""

from __future__ import annotations

SUMMARY_FILES: tuple[str, ...] = (
    "metrics_long.csv", "comparison.csv", "comparison.md", "cost.csv",
    "paired_vs_baseline.csv", "paired_vs_teacher.csv", "ranking.csv", "ranking_stability.csv",
    "results.csv", "results.md", "results.tex", "subsets.csv", "subsets.md", "subsets.tex",
)
"""Files of ``results/<dataset>/summary/`` (see :mod:`kdseg.report.summary`)."""

FIGURES: tuple[str, ...] = (
    "paired_differences_dice", "paired_differences_hd95", "heatmap_dice", "ranking_stability",
    "overlays",
)
"""Figures of ``results/<dataset>/report/figures/``, each as ``.png`` and ``.pdf``
(see :mod:`kdseg.report.figures`)."""
