"""Pick the cases, runs and slices of the overlay figure and read them from disk.

What is shown, chosen without looking at the pictures:

* the *best distilled student* is the subset x method with the largest mean (over regions)
  median paired Δ Dice vs the baseline; its subset's baseline and the teacher are shown beside
  it (without a KD method: the first subset's baseline alone);
* the cases are those at the lowest, median and highest per-case Δ mean Dice of that student vs
  the baseline (evenly spaced in that order for more than three), so the figure shows where
  distillation hurt, did nothing and helped, not a hand-picked success;
* the slice is the axial slice (after reorientation to RAS) with the largest reference tumour
  area; the image is the student's first available modality.

Predictions come from the lowest seed; with k folds each case is read from the fold whose model
did not train on it (the run folder that holds its prediction).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import yaml

from kdseg.data.geometry import CaseGeometry, forward_labels
from kdseg.data.labels import LabelConvention
from kdseg.data.preprocess import load_preprocessed
from kdseg.report.figures import OverlayPanel
from kdseg.report.stats import TEACHER


@dataclass(frozen=True)
class RunInfo:
    stage: str
    subset: str
    method: str
    fold: int
    seed: int
    run_dir: Path


def run_infos(run_dirs: Sequence[Path]) -> list[RunInfo]:
    """Identity of each run folder from its ``run_config.yaml``."""
    out = []
    for run_dir in map(Path, run_dirs):
        cfg = yaml.safe_load((run_dir / "run_config.yaml").read_text())
        out.append(RunInfo(cfg["stage"], cfg["subset"], cfg["method"]["name"], int(cfg["fold"]),
                           int(cfg["seed"]), run_dir))
    return out


def best_student(paired: pd.DataFrame, long: pd.DataFrame) -> tuple[str | None, str | None]:
    """``(subset, best KD method)`` by mean-over-regions median Δ Dice vs baseline.

    Without any defined difference (no baseline, one method, no pairs) the method is None and
    the subset is the first student subset; both are None without students.
    """
    dice = paired[paired["metric"] == "dice"] if not paired.empty else paired
    score = (dice.groupby(["subset", "method"], sort=False)["median_diff"].mean().dropna()
             if not dice.empty else pd.Series(dtype=float))
    if score.empty:
        students = long[long["stage"] == "student"]
        return (str(students["subset"].iloc[0]) if len(students) else None), None
    subset, method = score.idxmax()
    return str(subset), str(method)


def pick_cases(long: pd.DataFrame, subset: str, method: str | None, n: int) -> list[str]:
    """Cases at evenly spaced quantiles of the per-case Δ mean Dice (method − baseline)."""
    rows = long[(long["stage"] == "student") & (long["subset"] == subset) &
                (long["metric"] == "dice")]
    per_case = rows.groupby(["method", "case"])["value"].mean().unstack("method")
    if per_case.empty:
        return []
    if method is None or "baseline" not in per_case:
        # no difference to spread over: order by the (first) student's own Dice
        shown = "baseline" if "baseline" in per_case else per_case.columns[0]
        order = per_case[shown].dropna().sort_values(kind="stable").index.tolist()
    else:
        diff = (per_case[method] - per_case["baseline"]).dropna()
        order = diff.sort_values(kind="stable").index.tolist()
    if len(order) <= n:
        return order
    picks = np.unique(np.round(np.linspace(0, len(order) - 1, n)).astype(int))
    return [order[i] for i in picks]


def _forward(path: Path, geometry: CaseGeometry, convention: LabelConvention) -> np.ndarray:
    """A label file of the original grid as class ids in the preprocessed grid."""
    return forward_labels(np.asanyarray(nib.load(path).dataobj), geometry, convention, str(path))


def _prediction(runs: Sequence[RunInfo], stage: str, subset: str, method: str,
                case: str) -> Path | None:
    """The lowest-seed prediction of ``case`` by the (stage, subset, method) runs, if any."""
    for run in sorted(runs, key=lambda r: (r.seed, r.fold)):
        if (run.stage, run.subset, run.method) == (stage, subset, method):
            path = run.run_dir / "predictions" / f"{case}.nii.gz"
            if path.is_file():
                return path
    return None


def _display(slice_2d: np.ndarray) -> np.ndarray:
    # RAS (x right, y anterior): transpose + flip puts anterior up, patient right on the left.
    return np.flipud(slice_2d.T)


def overlay_rows(long: pd.DataFrame, paired: pd.DataFrame, run_dirs: Sequence[Path],
                 preprocessed: Path, convention: LabelConvention, modalities: Sequence[str],
                 n_cases: int) -> tuple[list[tuple[str, list[OverlayPanel]]], str]:
    """Rows for :func:`kdseg.report.figures.overlay_figure` and the figure caption.

    Shown in the preprocessed grid (RAS, cropped, z-scored image): the same view for every
    dataset layout; predictions are brought into it with :func:`forward_labels`.
    """
    runs = run_infos(run_dirs)
    subset, method = best_student(paired, long)
    if subset is None:
        return [], "no student"
    cases = pick_cases(long, subset, method, n_cases)
    modality = next(m for m in modalities if m in subset.split("+"))
    teacher_subset = next((r.subset for r in runs if r.stage == "teacher"), None)
    in_subset = list(dict.fromkeys(long.loc[(long["stage"] == "student") &
                                            (long["subset"] == subset), "method"]))
    students = [m for m in ("baseline", method) if m in in_subset] or in_subset[:1]
    columns = [("teacher", "teacher", teacher_subset, TEACHER)]
    columns += [(m, "student", subset, m) for m in students]
    rows = []
    for case in cases:
        volume, reference, record = load_preprocessed(preprocessed, case)
        geometry = CaseGeometry.from_dict(record, source=f"{preprocessed}/{case}.json")
        image = np.asarray(volume[list(modalities).index(modality)], dtype=np.float32)
        if reference is None:
            continue
        reference = np.asarray(reference)
        z = int(np.argmax((reference > 0).sum(axis=(0, 1))))
        panels = [OverlayPanel(f"{modality} (input)", _display(image[:, :, z]), None),
                  OverlayPanel("reference", _display(image[:, :, z]),
                               _display(reference[:, :, z]))]
        for title, stage, col_subset, col_method in columns:
            path = _prediction(runs, stage, col_subset, col_method, case) if col_subset else None
            if path is None:
                continue
            classes = _forward(path, geometry, convention)
            panels.append(OverlayPanel(title, _display(image[:, :, z]),
                                       _display(classes[:, :, z])))
        rows.append((f"{case} (z={z})", panels))
    shown = f"{subset} student: " + " vs ".join(students) + (" (best KD)" if method else "")
    caption = (f"{shown}; cases at the lowest, median and highest per-case Δ Dice"
               if method else f"{shown}")
    return rows, caption
