"""Collect per-case metrics of every run into one long table and a comparison table.

The unit of analysis is the patient: metrics of several seeds are averaged per case first,
then summarised over cases (mean ± sd, median). Rows: the teacher first, then each student
subset × method in config order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from kdseg.report.formats import number
from kdseg.report.stats import MIN_PAIRS_WILCOXON

ID_COLUMNS = ["stage", "subset", "method", "fold", "seed"]
CONVENTION_COLUMNS = ("empty_rule", "nsd_tolerance_mm")
"""Per-row evaluation settings that must be equal across all summarised runs."""


def collect_metrics(run_dirs: Sequence[Path]) -> pd.DataFrame:
    """Long table: run identity columns + the run's ``metrics_per_case.csv`` rows."""
    frames = []
    for order, run_dir in enumerate(run_dirs):
        run_dir = Path(run_dir)
        cfg = yaml.safe_load((run_dir / "run_config.yaml").read_text())
        metrics_file = run_dir / "metrics_per_case.csv"
        if not metrics_file.exists():
            raise FileNotFoundError(f"{metrics_file}: missing; was the run evaluated?")
        df = pd.read_csv(metrics_file, dtype={"case": str})  # "00123" must stay a string
        df.insert(0, "stage", cfg["stage"])
        df.insert(1, "subset", cfg["subset"])
        df.insert(2, "method", cfg["method"]["name"])
        df.insert(3, "fold", cfg["fold"])
        df.insert(4, "seed", cfg["seed"])
        df["row_order"] = order
        frames.append(df)
    if not frames:
        raise ValueError("no runs to summarise")
    long = pd.concat(frames, ignore_index=True)
    # Every row records the evaluation convention; runs evaluated under different ones are
    # not comparable (e.g. an old evaluation kept after evaluation.empty_rule changed).
    for column in CONVENTION_COLUMNS:
        if column in long and long[column].nunique(dropna=False) > 1:
            found = sorted(map(str, long[column].unique()))
            runs = sorted({str(run_dirs[i]) for i in long.groupby(column)["row_order"].min()})
            raise ValueError(f"the runs were evaluated with different {column} values {found} "
                             f"(e.g. {', '.join(runs)}); re-evaluate them with one setting")
    return long


def summarise(long: pd.DataFrame) -> pd.DataFrame:
    """Per (stage, subset, method, region, metric): n cases, mean, sd, median, IQR.

    Seeds are averaged per case first; NaN values (excluded by the ``nan`` empty rule) are
    dropped and counted in ``n_excluded``.
    """
    keys = ["stage", "subset", "method", "region", "metric"]
    per_case = (long.groupby([*keys, "case"], sort=False)
                .agg(value=("value", "mean"), row_order=("row_order", "min")).reset_index())
    rows = []
    for key, group in per_case.groupby(keys, sort=False):
        values = group["value"].dropna().to_numpy()
        q1, q3 = (np.percentile(values, [25, 75]) if len(values) else (np.nan, np.nan))
        rows.append({
            **dict(zip(keys, key, strict=True)), "n": len(values),
            "n_excluded": int(group["value"].isna().sum()),
            "mean": float(np.mean(values)) if len(values) else np.nan,
            "sd": float(np.std(values, ddof=1)) if len(values) > 1 else np.nan,
            "median": float(np.median(values)) if len(values) else np.nan,
            "q1": q1, "q3": q3, "row_order": int(group["row_order"].min()),
        })
    return pd.DataFrame(rows).sort_values("row_order", kind="stable").drop(columns="row_order")


def metric_means(per_case: pd.DataFrame, prefix: str = "test") -> dict[str, float]:
    """``{"test/dice/WT": mean over cases, ...}`` from long per-case rows (NaN rows skipped).

    These are the numbers written onto the run's MLflow run, so the compare view shows
    method x subset x region directly.
    """
    means = per_case.groupby(["metric", "region"], sort=False)["value"].mean()
    out = {f"{prefix}/{metric}/{region}": float(v) for (metric, region), v in means.items()}
    for metric in dict.fromkeys(per_case["metric"]):
        regional = [v for (m, _), v in means.items() if m == metric]
        out[f"{prefix}/{metric}/mean"] = float(np.nanmean(regional))
    return out


def _model_label(stage: str, subset: str, method: str) -> str:
    return f"teacher ({subset})" if stage == "teacher" else f"{subset} · {method}"


def comparison_markdown(summary: pd.DataFrame, digits: dict[str, int] | None = None,
                        metrics: Sequence[str] | None = None) -> str:
    """One Markdown table per metric (all, or those in ``metrics``): rows = models, columns =
    regions; cells mean ± sd (median)."""
    digits = digits or {"dice": 3, "hd95": 1}
    out = []
    if metrics is not None:
        summary = summary[summary["metric"].isin(metrics)]
    for metric, table in summary.groupby("metric", sort=False):
        d = digits.get(str(metric), 3)
        regions = list(dict.fromkeys(table["region"]))
        unit = " (mm)" if metric == "hd95" else ""
        header = f"| model | {' | '.join(regions)} | mean |"
        lines = [f"**{metric.upper()}{unit}** — mean ± sd (median) over test cases", "",
                 header, "|" + "---|" * (len(regions) + 2)]
        models = table.groupby(["stage", "subset", "method"], sort=False)
        for (stage, subset, method), rows in models:
            by_region = rows.set_index("region")
            cells = [f"{number(by_region.at[r, 'mean'], d)} ± {number(by_region.at[r, 'sd'], d)} "
                     f"({number(by_region.at[r, 'median'], d)})" for r in regions]
            lines.append(f"| {_model_label(stage, subset, method)} | {' | '.join(cells)} | "
                         f"{number(by_region['mean'].mean(), d)} |")
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def paired_markdown(stats: pd.DataFrame, metric: str = "dice", digits: int = 3) -> str:
    """Δ vs the reference per subset · method (rows) and region (columns): median paired
    difference [95 % bootstrap CI], Holm-adjusted Wilcoxon p; ``*`` marks p_holm < 0.05."""
    table = stats[stats["metric"] == metric]
    if table.empty:
        return ""
    regions = list(dict.fromkeys(table["region"]))
    reference = table["reference"].iloc[0]
    family = table["family"].iloc[0]
    lines = [f"**Δ {metric.upper()} vs {reference}** — median paired difference per case "
             f"[95 % bootstrap CI], Holm-adjusted Wilcoxon p (family: {family}); "
             f"* = p < 0.05; p = – with fewer than {MIN_PAIRS_WILCOXON} paired cases", "",
             f"| model | {' | '.join(regions)} |", "|" + "---|" * (len(regions) + 1)]
    for (subset, method), rows in table.groupby(["subset", "method"], sort=False):
        by_region = rows.set_index("region")
        cells = []
        for r in regions:
            row = by_region.loc[r]
            star = "*" if row["significant"] else ""
            p = "–" if pd.isna(row["p_holm"]) else f"{row['p_holm']:.2g}"
            cells.append(f"{row['median_diff']:+.{digits}f} [{row['ci_low']:+.{digits}f}, "
                         f"{row['ci_high']:+.{digits}f}] p={p}{star}")
        lines.append(f"| {subset} · {method} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"
