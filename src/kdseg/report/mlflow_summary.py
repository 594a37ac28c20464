"""Mirror the benchmark's tables, figures and report into one MLflow *summary* run.

The per-run test metrics stay on the training runs (``kdseg evaluate`` syncs them); the summary
run carries what belongs to the benchmark as a whole. It is found again by a deterministic run
key (the dataset plus a hash of the run keys it summarises), so rerunning the report updates the
same run instead of adding one. Afterwards every kdseg run of the dataset that is not part of
this benchmark (an older config's) is tagged ``kdseg.current=false``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from kdseg.evaluation.metrics import HIGHER_IS_BETTER
from kdseg.tracking import RunTracker, mark_stale_runs

if TYPE_CHECKING:
    from kdseg.report.html import ReportInputs


def summary_run_key(dataset: str, run_keys: list[str]) -> str:
    """``<dataset>/summary/<sha1 of the sorted run keys>``: one summary run per design."""
    digest = hashlib.sha1("\n".join(sorted(run_keys)).encode()).hexdigest()[:10]
    return f"{dataset}/summary/{digest}"


def significance_counts(paired: pd.DataFrame) -> dict[str, float]:
    """Per metric: comparisons vs the baseline, significantly better, significantly worse.

    "Better" follows the metric's direction: a positive difference is better for Dice, NSD,
    sensitivity and specificity, worse for HD95.
    """
    out: dict[str, float] = {}
    for metric, rows in paired.groupby("metric", sort=False):
        sign = 1.0 if HIGHER_IS_BETTER.get(str(metric), True) else -1.0
        improved = sign * rows["median_diff"]
        significant = rows["significant"].astype(bool)
        out[f"summary/{metric}/comparisons"] = float(len(rows))
        out[f"summary/{metric}/significant_better"] = float((significant & (improved > 0)).sum())
        out[f"summary/{metric}/significant_worse"] = float((significant & (improved < 0)).sum())
    return out


def log_summary_run(inputs: ReportInputs, report_dir: Path, tracking: dict[str, str]) -> bool:
    """Log tables, figures and ``index.html`` to the summary run; True when all arrived.

    Never raises for tracking failures (the tracker warns and disables itself).
    """
    infos = inputs.run_infos()
    dataset = inputs.config["dataset"]["name"]
    run_keys = [info["run_key"] for info in infos]
    key = summary_run_key(dataset, run_keys)
    stats = inputs.config.get("statistics", {})
    tracker = RunTracker.open(
        tracking["uri"], tracking["experiment_id"], key, f"summary · {dataset}",
        tags={"kdseg.stage": "summary", "kdseg.dataset": dataset,
              "kdseg.git_sha": str(infos[0].get("git_sha", "unknown"))},
        params={"n_runs": len(run_keys), **{f"statistics.{k}": v for k, v in stats.items()}},
    )
    tracker.log_metrics(significance_counts(inputs.table("paired_vs_baseline")), step=0)
    for path in sorted(inputs.summary_dir.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            tracker.log_artifact(path, "tables")
    for path in sorted((report_dir / "figures").iterdir()):
        if path.is_file() and not path.name.startswith("."):
            tracker.log_artifact(path, "figures")
    tracker.log_artifact(report_dir / "index.html", "report")
    ok = tracker.ok
    tracker.finish("FINISHED")
    mark_stale_runs(tracking["uri"], tracking["experiment_id"], [*run_keys, key],
                    key_prefix=f"{dataset}/")
    return ok
