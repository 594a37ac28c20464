"""Figures of the benchmark report (matplotlib, Agg backend; saved as PNG and PDF).

* :func:`paired_differences_figure`: per subset (rows) and region (columns), the per-case
  differences of each method against the baseline student as box + strip plots; a star marks a
  Holm-significant difference.
* :func:`heatmap_figure`: mean metric per subset (rows) x method (columns), one panel per region.
* :func:`ranking_stability_figure`: blob plot of the bootstrap rank distribution per subset
  (circle area = how often a method took that rank; x = its rank on the full data).
* :func:`overlay_figure`: one slice per case: image, reference, teacher, baseline student and the
  best distilled student, labels drawn over the image.

Every function returns a ``matplotlib.figure.Figure``; :func:`save` writes ``<stem>.png`` and
``<stem>.pdf``. A figure with nothing to show says so in its one panel instead of failing, so the
report's file set never depends on the benchmark design.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: cluster nodes and CI have no display

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from kdseg.fileio import atomic_path
from kdseg.report.paper import student_means
from kdseg.report.stats import paired_difference_table

# BraTS colours used by most papers: NCR red, edema green, enhancing tumour yellow.
CLASS_COLOURS = ListedColormap(["#00000000", "#e41a1c", "#4daf4a", "#ffd92f"])
METRIC_LABELS = {"dice": "Dice", "hd95": "HD95 (mm)", "nsd": "NSD",
                 "sensitivity": "sensitivity", "specificity": "specificity"}


def save(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem.png`` (150 dpi) and ``stem.pdf`` atomically, close the figure."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, kwargs in ((".png", {"dpi": 150}), (".pdf", {})):
        path = stem.with_suffix(suffix)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=suffix[1:], bbox_inches="tight", **kwargs)
        paths.append(path)
    plt.close(fig)
    return paths


def _empty(message: str) -> Figure:
    fig, ax = plt.subplots(figsize=(6, 1.5))
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11)
    ax.set_axis_off()
    return fig


def paired_differences_figure(long: pd.DataFrame, paired: pd.DataFrame, metric: str,
                              reference: str = "baseline") -> Figure:
    """Per-case ``method − reference`` differences of ``metric`` (box + points per method)."""
    table = paired[paired["metric"] == metric] if not paired.empty else paired
    if table.empty:
        return _empty(f"No method to compare with the {reference} ({metric}).")
    subsets = list(dict.fromkeys(table["subset"]))
    regions = list(dict.fromkeys(table["region"]))
    methods = list(dict.fromkeys(table["method"]))
    fig, axes = plt.subplots(len(subsets), len(regions), squeeze=False, sharey="col",
                             figsize=(1.0 + 0.75 * len(methods) * len(regions),
                                      0.6 + 2.1 * len(subsets)))
    rng = np.random.default_rng(0)  # jitter only; fixed so the figure is reproducible
    stats = table.set_index(["subset", "method", "region"])
    diffs = paired_difference_table(long[long["metric"] == metric], reference)
    by_key = {key: rows["diff"].to_numpy()
              for key, rows in diffs.groupby(["subset", "method", "region"], sort=False)}
    for i, subset in enumerate(subsets):
        for j, region in enumerate(regions):
            ax = axes[i, j]
            data = [by_key.get((subset, m, region), np.empty(0)) for m in methods]
            ax.axhline(0.0, color="0.5", lw=0.8, zorder=0)
            ax.boxplot(data, positions=range(len(methods)), widths=0.55, showfliers=False,
                       medianprops={"color": "black"})
            for k, values in enumerate(data):
                ax.scatter(k + rng.uniform(-0.15, 0.15, len(values)), values, s=9,
                           alpha=0.6, color="C0", zorder=3)
                if (subset, methods[k], region) in stats.index and \
                        bool(stats.loc[(subset, methods[k], region), "significant"]):
                    ax.annotate("*", (k, 1.0), xycoords=("data", "axes fraction"),
                                ha="center", va="top", fontsize=14, color="C3")
            ax.set_xticks(range(len(methods)), methods if i == len(subsets) - 1 else [],
                          rotation=45, ha="right")
            ax.set_title(f"{subset} · {region}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"Δ {METRIC_LABELS.get(metric, metric)}", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle(f"Per-case Δ {METRIC_LABELS.get(metric, metric)} vs {reference} "
                 "(* = Holm-adjusted p < 0.05)", fontsize=10)
    fig.tight_layout()
    return fig


def heatmap_figure(summary: pd.DataFrame, metric: str) -> Figure:
    """Mean ``metric`` per subset x method, one panel per region (values written in cells)."""
    subsets, methods, regions, means = student_means(summary, metric)
    if not subsets:
        return _empty(f"No student results for {metric}.")
    fig, axes = plt.subplots(1, len(regions), squeeze=False,
                             figsize=(0.9 + 0.75 * len(methods) * len(regions),
                                      1.2 + 0.32 * len(subsets)))
    for ax, region in zip(axes[0], regions, strict=True):
        grid = np.array([[means.get((s, m, region), np.nan) for m in methods] for s in subsets])
        image = ax.imshow(grid, cmap="viridis", aspect="auto",
                          vmin=0.0 if metric != "hd95" else None,
                          vmax=1.0 if metric != "hd95" else None)
        for (r, c), value in np.ndenumerate(grid):
            if np.isfinite(value):
                ax.text(c, r, f"{value:.2f}" if metric != "hd95" else f"{value:.0f}",
                        ha="center", va="center", fontsize=6.5,
                        color="white" if image.norm(value) < 0.5 else "black")
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(subsets)), subsets if ax is axes[0][0] else [], fontsize=7)
        ax.set_title(region, fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8,
                 label=f"mean {METRIC_LABELS.get(metric, metric)}")
    return fig


def ranking_stability_figure(ranking: pd.DataFrame, stability: pd.DataFrame) -> Figure:
    """Blob plot per subset: bootstrap rank frequencies (area) per method, full-data rank (x)."""
    if ranking.empty or ranking["method"].nunique() < 2:
        return _empty("Fewer than two methods: nothing to rank.")
    subsets = list(dict.fromkeys(ranking["subset"]))
    ncols = min(4, len(subsets))
    nrows = -(-len(subsets) // ncols)
    n_methods = ranking["method"].nunique()
    fig, axes = plt.subplots(nrows, ncols, squeeze=False,
                             figsize=(0.6 + 0.55 * n_methods * ncols, 0.8 + 2.4 * nrows))
    for ax, subset in zip(axes.flat, subsets, strict=False):
        order = ranking[ranking["subset"] == subset]
        methods = order["method"].tolist()
        freq = stability[stability["subset"] == subset].set_index(["method", "rank"])["frequency"]
        for k, method in enumerate(methods):
            ranks = np.arange(1, len(methods) + 1)
            sizes = np.array([freq.get((method, r), 0.0) for r in ranks]) * 250
            ax.scatter(np.full(len(ranks), k), ranks, s=sizes, color="C0", alpha=0.7)
            ax.scatter([k], [order["rank"].iloc[k]], marker="x", color="black", s=25)
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=7)
        ax.set_ylim(len(methods) + 0.6, 0.4)
        ax.set_yticks(range(1, len(methods) + 1))
        ax.set_ylabel("rank", fontsize=8)
        ax.set_title(subset, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(subsets):]:
        ax.set_axis_off()
    fig.suptitle("Ranking stability: bootstrap rank frequency (area), full-data rank (×)",
                 fontsize=10)
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class OverlayPanel:
    """One image of an overlay row: a title and a 2-D slice, already oriented for display."""

    title: str
    image: np.ndarray
    classes: np.ndarray | None  # class ids 0..3 drawn over the image, None = image only


def overlay_figure(rows: Sequence[tuple[str, Sequence[OverlayPanel]]], caption: str) -> Figure:
    """Rows of panels (``(case, panels)``), labels in the BraTS colours over the image."""
    if not rows:
        return _empty("No predicted test case to show.")
    ncols = max(len(panels) for _, panels in rows)
    fig, axes = plt.subplots(len(rows), ncols, squeeze=False,
                             figsize=(2.0 * ncols, 2.1 * len(rows)))
    for i, (case, panels) in enumerate(rows):
        for j, panel in enumerate(panels):
            ax = axes[i, j]
            low, high = np.percentile(panel.image, [1, 99.5])
            ax.imshow(panel.image, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
            if panel.classes is not None:
                ax.imshow(panel.classes, cmap=CLASS_COLOURS, vmin=0, vmax=3, alpha=0.55,
                          interpolation="nearest")
            ax.set_title(panel.title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(case, fontsize=8)
    fig.suptitle(caption + "  (red NCR, green edema, yellow enhancing)", fontsize=9)
    fig.tight_layout()
    return fig
