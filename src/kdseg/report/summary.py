"""The ``summarize`` stage: every table of the benchmark, from the evaluated run folders.

Writes into ``results/<dataset>/summary/`` (the names are
:data:`kdseg.report.files.SUMMARY_FILES`; Snakemake declares the same list):

* ``metrics_long.csv``: every per-case row of every run (the input of all statistics);
* ``comparison.csv`` / ``comparison.md``: mean ± sd / median / IQR per model x region x metric,
  and the Markdown digest printed at the end of ``make run`` (accuracy, Δ Dice vs baseline,
  ranking, training cost);
* ``paired_vs_baseline.csv``, ``paired_vs_teacher.csv``: paired statistics
  (:mod:`kdseg.report.stats`);
* ``ranking.csv``, ``ranking_stability.csv``: BraTS-style ranking (:mod:`kdseg.report.ranking`);
* ``results.{csv,md,tex}``: per model x region x metric, mean ± sd, median [IQR], Δ vs baseline
  with CI and Holm p (:func:`kdseg.report.paper.results_table`);
* ``subsets.{csv,md,tex}``: the literature-shaped subset tables (Dice, HD95, NSD);
* ``cost.csv``: training cost per run (:mod:`kdseg.report.cost`).

Tables that have nothing to show (no baseline, one method) are still written, with their
columns and no rows, so the file set never depends on the design.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from kdseg.fileio import atomic_path, write_text_atomic
from kdseg.report import formats
from kdseg.report.cost import collect_costs, cost_markdown
from kdseg.report.paper import results_table, subset_table
from kdseg.report.ranking import ALL_SUBSETS, rank_methods
from kdseg.report.stats import FAMILIES, TEACHER, compare_to_reference
from kdseg.report.tables import collect_metrics, comparison_markdown, paired_markdown, summarise

DIGEST_METRICS: tuple[str, ...] = ("dice", "hd95")
"""Metrics of the Markdown digest printed by ``make run`` (the CSVs hold every metric)."""
SUBSET_TABLE_METRICS: tuple[str, ...] = ("dice", "hd95", "nsd")
BASELINE = "baseline"


@dataclass(frozen=True)
class StatisticsOptions:
    """The ``statistics`` block of the config (documented in ``config/README.md``)."""

    family: str = "subset_region"
    n_boot: int = 2000
    seed: int = 0
    ranking_metrics: tuple[str, ...] = ("dice", "hd95")
    ranking_boot: int = 1000

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"statistics.family {self.family!r} must be one of {list(FAMILIES)}")
        if self.n_boot < 1 or self.ranking_boot < 1:
            raise ValueError("statistics.n_boot and statistics.ranking_boot must be >= 1")


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def _modalities(run_dirs: Sequence[Path]) -> list[str]:
    cfg = yaml.safe_load((Path(run_dirs[0]) / "run_config.yaml").read_text())
    return list(cfg["modalities"])


def paired_tables(long: pd.DataFrame, options: StatisticsOptions) -> dict[str, pd.DataFrame]:
    """``{"baseline": ..., "teacher": ...}`` paired statistics; empty frames when not defined."""
    students = long[long["stage"] == "student"]
    methods = set(students["method"])
    empty = compare_to_reference(long.iloc[0:0], reference=BASELINE)
    kwargs = {"family": options.family, "n_boot": options.n_boot, "seed": options.seed}
    out = {BASELINE: empty, TEACHER: empty}
    if BASELINE in methods and len(methods) > 1:
        out[BASELINE] = compare_to_reference(long, reference=BASELINE, **kwargs)
    if not students.empty and (long["stage"] == "teacher").any():
        out[TEACHER] = compare_to_reference(long, reference=TEACHER, **kwargs)
    return out


def ranking_markdown(ranking: pd.DataFrame) -> str:
    """Methods in rank order per subset, with the bootstrap probability of ranking first."""
    if ranking.empty:
        return ""
    lines = ["**Ranking** — BraTS-style rank-then-aggregate over cases, regions and "
             "metrics (1 = best); P(1st) from the case bootstrap", "",
             "| subset | ranking (score, P(1st)) | Kendall τ |", "|---|---|---|"]
    for subset, rows in ranking.groupby("subset", sort=False):
        order = ", ".join(f"{r.rank}. {r.method} ({r.score:.2f}, {r.p_first:.0%})"
                          for r in rows.itertuples())
        label = f"**{subset}**" if subset == ALL_SUBSETS else subset
        tau = rows["kendall_tau_median"].iloc[0]
        lines.append(f"| {label} | {order} | {'–' if pd.isna(tau) else f'{tau:.2f}'} |")
    return "\n".join(lines) + "\n"


def _results_files(summary: pd.DataFrame, paired: pd.DataFrame, out_dir: Path) -> None:
    frames, md, tex = [], [], []
    for metric in dict.fromkeys(summary["metric"]):
        table = results_table(summary, paired, str(metric))
        frames.append(formats.plain_csv_frame(table).assign(metric=metric))
        title = f"{str(metric).upper()} per model and region"
        md.append(f"### {title}\n\n{formats.to_markdown(table)}")
        tex.append(formats.to_latex(table, f"{title}; Δ = median paired difference vs the "
                                    "baseline student [95 % bootstrap CI], Holm-adjusted "
                                    "Wilcoxon p; * = significant at 0.05.",
                                    f"tab:results-{metric}"))
    _write_csv(pd.concat(frames, ignore_index=True), out_dir / "results.csv")
    write_text_atomic("\n".join(md), out_dir / "results.md")
    write_text_atomic("\n".join(tex), out_dir / "results.tex")


def _subset_files(summary: pd.DataFrame, modalities: list[str], out_dir: Path) -> None:
    frames, md, tex = [], [], []
    present = set(summary.loc[summary["stage"] == "student", "metric"])
    for metric in [m for m in SUBSET_TABLE_METRICS if m in present]:
        numeric, display = subset_table(summary, metric, modalities)
        frames.append(numeric.assign(metric=metric))
        best = "lowest" if metric == "hd95" else "highest"
        caption = (f"Mean {metric.upper()} per available-modality subset (● available, "
                   f"○ missing); {best} per region in bold.")
        md.append(f"### {metric.upper()}\n\n{caption}\n\n{formats.to_markdown(display)}")
        tex.append(formats.to_latex(display, caption, f"tab:subsets-{metric}"))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["row"])
    _write_csv(frame, out_dir / "subsets.csv")
    write_text_atomic("\n".join(md), out_dir / "subsets.md")
    write_text_atomic("\n".join(tex), out_dir / "subsets.tex")


def write_summary(run_dirs: Sequence[Path], out_dir: Path,
                  options: StatisticsOptions | None = None) -> tuple[pd.DataFrame, str]:
    """Write :data:`~kdseg.report.files.SUMMARY_FILES` into ``out_dir``; return the summary
    and the Markdown digest."""
    options = options or StatisticsOptions()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    long = collect_metrics(run_dirs)
    summary = summarise(long)
    costs = collect_costs(run_dirs)
    paired = paired_tables(long, options)
    ranking, stability = rank_methods(long, options.ranking_metrics, options.ranking_boot,
                                      options.seed)
    has_students = (long["stage"] == "student").any()

    markdown = comparison_markdown(summary, metrics=DIGEST_METRICS)
    if not paired[BASELINE].empty:
        markdown += "\n" + paired_markdown(paired[BASELINE], "dice")
    if ranking["method"].nunique() > 1:
        markdown += "\n" + ranking_markdown(ranking)
    markdown += "\n" + cost_markdown(costs)

    _write_csv(long.drop(columns="row_order"), out_dir / "metrics_long.csv")
    _write_csv(summary, out_dir / "comparison.csv")
    _write_csv(costs, out_dir / "cost.csv")
    _write_csv(paired[BASELINE], out_dir / "paired_vs_baseline.csv")
    _write_csv(paired[TEACHER], out_dir / "paired_vs_teacher.csv")
    _write_csv(ranking, out_dir / "ranking.csv")
    _write_csv(stability, out_dir / "ranking_stability.csv")
    _results_files(summary, paired[BASELINE], out_dir)
    _subset_files(summary if has_students else summary.iloc[0:0], _modalities(run_dirs),
                  out_dir)
    write_text_atomic(markdown, out_dir / "comparison.md")
    return summary, markdown
