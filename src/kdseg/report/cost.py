"""What each model cost to train, from the run folders' ``run.json`` and ``history.csv``.

A fair comparison states cost next to accuracy: a two-stage method reuses one teacher run per
fold × seed (listed once as the teacher row), a single-stage method trains its teacher path
inside every student job, so its per-job time already includes the teacher.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from kdseg.config import method_teacher, train_benchmark_file
from kdseg.report.formats import number

TEACHER_NOTE = {"none": "none", "frozen": "frozen teacher run (shared)",
                "joint": "teacher path trained in the job"}


def _snakemake_benchmark(run_dir: Path) -> dict[str, float]:
    """Wall seconds and max RSS (MB) of the training job from Snakemake's benchmark TSV.

    These include process start-up and imports, which ``run.json`` does not; NaN when the run
    was not made by the workflow (no TSV). A resumed job's TSV covers its last attempt only.
    """
    missing = {"job_wall_s": float("nan"), "job_max_rss_mb": float("nan")}
    try:
        path = Path(train_benchmark_file(str(run_dir)))
    except ValueError:  # a run folder outside the workflow's layout
        return missing
    if not path.is_file():
        return missing
    row = pd.read_csv(path, sep="\t").iloc[-1]
    return {"job_wall_s": float(row["s"]), "job_max_rss_mb": float(row["max_rss"])}


def collect_costs(run_dirs: Sequence[Path]) -> pd.DataFrame:
    """One row per run: identity, teacher mode, steps, training seconds (``train_s``: epochs
    incl. validation; ``steps_s``: the optimisation steps incl. data loading), s/step (from
    ``steps_s``), peak memory (``run.json``), and the whole job's wall time and max RSS from
    Snakemake's benchmark file (``job_wall_s``, ``job_max_rss_mb``; NaN without one)."""
    rows = []
    for run_dir in map(Path, run_dirs):
        cfg = yaml.safe_load((run_dir / "run_config.yaml").read_text())
        info = json.loads((run_dir / "run.json").read_text())
        train = cfg["train"]
        steps = int(train["epochs"]) * int(train["iterations_per_epoch"])
        teacher = "-" if cfg["stage"] == "teacher" else method_teacher(cfg["method"])
        rows.append({
            "stage": cfg["stage"], "subset": cfg["subset"], "method": cfg["method"]["name"],
            "fold": cfg["fold"], "seed": cfg["seed"], "teacher": teacher, "steps": steps,
            "train_s": float(info.get("train_time_s", float("nan"))),
            "steps_s": float(info.get("steps_time_s", float("nan"))),
            "peak_rss_mb": float(info.get("peak_rss_mb", float("nan"))),
            "device": info.get("device", ""), **_snakemake_benchmark(run_dir),
        })
    if not rows:
        raise ValueError("collect_costs: no runs")
    table = pd.DataFrame(rows)
    table["s_per_step"] = table["steps_s"] / table["steps"]  # validation excluded
    return table


def cost_markdown(costs: pd.DataFrame) -> str:
    """Per model kind (teacher, then each method): mean training time per job and per step."""
    grouped = costs.groupby(["stage", "method", "teacher"], sort=False).agg(
        jobs=("train_s", "size"), train_s=("train_s", "mean"), s_per_step=("s_per_step", "mean"),
        steps=("steps", "first"), peak_rss_mb=("peak_rss_mb", "max"),
        job_wall_s=("job_wall_s", "mean")).reset_index()
    base = grouped.loc[(grouped["method"] == "baseline") & (grouped["stage"] == "student"),
                       "s_per_step"]
    devices = ", ".join(sorted(map(str, set(costs["device"])))) or "unknown"
    lines = [f"**Training cost** — mean per job; s/step = optimisation steps incl. data loading, "
             "validation excluded; train s = whole training incl. validation; job s = the "
             f"Snakemake job's wall time incl. start-up (device: {devices})", "",
             "| model | teacher | jobs | steps | train s | s/step | × baseline | peak RSS MB "
             "| job s |", "|---|---|---|---|---|---|---|---|---|"]
    for row in grouped.itertuples():
        label = "teacher (all modalities)" if row.stage == "teacher" else row.method
        ratio = f"{row.s_per_step / base.iloc[0]:.2f}" if len(base) else "–"
        note = TEACHER_NOTE.get(row.teacher, "—")
        lines.append(f"| {label} | {note} | {row.jobs} | {row.steps} | {row.train_s:.0f} | "
                     f"{row.s_per_step:.3f} | {ratio} | {row.peak_rss_mb:.0f} | "
                     f"{number(row.job_wall_s, 0)} |")
    return "\n".join(lines) + "\n"
