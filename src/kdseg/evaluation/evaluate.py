"""Evaluate a folder of predicted label maps against reference segmentations (NIfTI).

Layout:
    predictions  ``pred_dir/<case>.nii.gz``
    references   ``ref_dir/<case>/<case>_seg.nii.gz`` (BraTS layout) or ``ref_dir/<case>.nii.gz``
                 (plain), detected per case.

Every input problem (missing file, shape or affine mismatch, fractional or unexpected label
values, empty prediction folder) raises ``ValueError`` naming the file(s). File checks for all
cases run before any metric is computed, so a missing file fails fast.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm import tqdm

from kdseg.data.labels import LabelConvention
from kdseg.evaluation.metrics import check_empty_rule, check_nsd_tolerance, evaluate_case
from kdseg.fileio import atomic_path

NIFTI_SUFFIX = ".nii.gz"
# `empty_rule` and `nsd_tolerance_mm` repeat on every row so that each value carries the
# conventions it was computed under (tables from different settings cannot be mixed silently).
COLUMNS: tuple[str, ...] = (
    "case", "region", "metric", "value", "empty_state", "empty_rule", "nsd_tolerance_mm"
)
# Largest absolute difference allowed between prediction and reference affine entries; float32
# header storage and resampling round-trips leave differences far below this.
AFFINE_ATOL = 1e-3


def discover_cases(pred_dir: Path) -> list[str]:
    """Sorted case ids of all ``*.nii.gz`` files in ``pred_dir``; raise if there are none.

    Hidden files are skipped: they are temporary files of an interrupted writer
    (:func:`kdseg.fileio.atomic_path`), not predictions.
    """
    if not pred_dir.is_dir():
        raise ValueError(f"{pred_dir}: prediction folder does not exist")
    cases = sorted(p.name.removesuffix(NIFTI_SUFFIX) for p in pred_dir.glob(f"*{NIFTI_SUFFIX}")
                   if not p.name.startswith("."))
    if not cases:
        raise ValueError(f"{pred_dir}: prediction folder holds no *{NIFTI_SUFFIX} files")
    return cases


def prediction_path(pred_dir: Path, case: str) -> Path:
    """``pred_dir/<case>.nii.gz``; raise naming the expected path if it is missing."""
    path = pred_dir / f"{case}{NIFTI_SUFFIX}"
    if not path.is_file():
        raise ValueError(f"{path}: prediction for case {case!r} is missing")
    return path


def reference_path(ref_dir: Path, case: str) -> Path:
    """The reference of ``case`` in BraTS or plain layout; raise if neither or both exist.

    Both existing is an error rather than a silent preference: two candidate references for one
    case means the folder is not what the caller thinks it is.
    """
    brats = ref_dir / case / f"{case}_seg{NIFTI_SUFFIX}"
    plain = ref_dir / f"{case}{NIFTI_SUFFIX}"
    found = [p for p in (brats, plain) if p.is_file()]
    if not found:
        raise ValueError(f"reference for case {case!r} is missing: neither {brats} nor {plain}")
    if len(found) == 2:
        raise ValueError(f"reference for case {case!r} is ambiguous: both {brats} and {plain}")
    return found[0]


def _reference(refs: Path | Mapping[str, Path], case: str) -> Path:
    if not isinstance(refs, Mapping):
        return reference_path(Path(refs), case)
    if case not in refs:
        raise ValueError(f"no reference file given for case {case!r}")
    path = Path(refs[case])
    if not path.is_file():
        raise ValueError(f"{path}: reference of case {case!r} is missing")
    return path


def _check_geometry(
    pred: nib.Nifti1Image, ref: nib.Nifti1Image, pred_path: Path, ref_path: Path
) -> None:
    """Raise unless prediction and reference are 3D with equal shape and (nearly) equal affine."""
    if len(ref.shape) != 3:
        raise ValueError(f"{ref_path}: expected a 3D label map, got shape {ref.shape}")
    if pred.shape != ref.shape:
        raise ValueError(
            f"shape mismatch: prediction {pred_path} has {pred.shape}, "
            f"reference {ref_path} has {ref.shape}"
        )
    difference = float(np.max(np.abs(pred.affine - ref.affine)))
    if not difference <= AFFINE_ATOL:  # `not <=` so a NaN affine also fails
        raise ValueError(
            f"affine mismatch between prediction {pred_path} and reference {ref_path}: "
            f"max abs difference {difference:.3g} > {AFFINE_ATOL}"
        )


def load_labels(img: nib.Nifti1Image, path: Path, convention: LabelConvention) -> np.ndarray:
    """Label map of ``img`` as an integer array ``(x, y, z)``, validated against ``convention``.

    Float-stored labels (common for BraTS ``_seg`` files, or any file with a scale factor) are
    accepted when every value is a whole number; fractional or non-finite values mean the file is
    a probability map or was resampled with interpolation, and raise ``ValueError``.
    """
    # `dataobj` applies the header scale factors but, unlike get_fdata(), keeps integer dtypes.
    data = np.asanyarray(img.dataobj)
    if np.issubdtype(data.dtype, np.floating):
        whole = np.isfinite(data) & (data == np.round(data))
        if not whole.all():
            example = data[~whole].flat[0]
            raise ValueError(
                f"{path}: label map holds non-integer values (e.g. {example!r}); "
                "expected whole-number labels"
            )
    elif not np.issubdtype(data.dtype, np.integer):
        raise ValueError(f"{path}: label map has non-numeric dtype {data.dtype}")
    convention.check_values(data, str(path))
    # Validated values; int16 keeps full-size BraTS arrays small (int32 for wide label maps).
    wide = max(convention.label_values) > np.iinfo(np.int16).max
    return data.astype(np.int32 if wide else np.int16, copy=False)


def _as_3d(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """A label file with a trailing singleton axis ``(X, Y, Z, 1)`` (some tools write them, and
    preprocessing accepts them) as the 3-D image it is; anything else unchanged."""
    return img.slicer[..., 0] if len(img.shape) == 4 and img.shape[3] == 1 else img


def evaluate_file_pair(
    pred_path: Path,
    ref_path: Path,
    convention: LabelConvention,
    empty_rule: str,
    case: str,
    nsd_tolerance_mm: float = 1.0,
) -> list[dict[str, float | str]]:
    """Load, validate and evaluate one prediction/reference pair; rows as :func:`evaluate_case`.

    Spacing is taken from the reference header zooms; ``nsd_tolerance_mm`` is in mm.
    """
    pred_img, ref_img = _as_3d(nib.load(pred_path)), _as_3d(nib.load(ref_path))
    _check_geometry(pred_img, ref_img, pred_path, ref_path)
    pred = load_labels(pred_img, pred_path, convention)
    ref = load_labels(ref_img, ref_path, convention)
    spacing = tuple(float(z) for z in ref_img.header.get_zooms()[:3])
    return evaluate_case(
        pred, ref, spacing, convention, empty_rule, case, nsd_tolerance_mm=nsd_tolerance_mm
    )


def write_csv_atomic(df: pd.DataFrame, out_csv: Path) -> None:
    """Write ``df`` to ``out_csv`` through a temporary file in the same folder and ``os.replace``.

    A crash or a killed job never leaves a half-written CSV under the final name, which Snakemake
    or a later summary step would otherwise pick up as complete.
    """
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False)


def _check_case_list(cases: Sequence[str]) -> None:
    """Raise if the requested case list is empty or names a case twice."""
    if not cases:
        raise ValueError("no cases to evaluate: the requested case list is empty")
    duplicates = sorted(c for c, n in Counter(cases).items() if n > 1)
    if duplicates:
        raise ValueError(f"case list names these cases more than once: {duplicates}")


def evaluate_folder(
    pred_dir: Path,
    ref_dir: Path | Mapping[str, Path],
    convention: LabelConvention,
    empty_rule: str = "brats",
    cases: Sequence[str] | None = None,
    out_csv: Path | None = None,
    progress: bool = True,
    nsd_tolerance_mm: float = 1.0,
) -> pd.DataFrame:
    """Per-case, per-region metrics (:data:`~kdseg.evaluation.metrics.METRICS`) of ``pred_dir``.

    Args:
        pred_dir: folder of ``<case>.nii.gz`` predicted label maps (stored label values).
        ref_dir: folder of references, BraTS or plain layout (see module docstring), or a
            mapping case -> reference file (what preprocessing recorded, any dataset layout).
        convention: label convention of both predictions and references.
        empty_rule: one of :data:`kdseg.evaluation.metrics.EMPTY_RULES`.
        cases: case ids to evaluate; ``None`` means every prediction file in ``pred_dir``.
        out_csv: if given, the table is also written there (atomically).
        progress: show a tqdm progress bar over cases on stderr.
        nsd_tolerance_mm: tolerance in mm of the normalized surface Dice (finite, >= 0).

    Returns:
        Long-format DataFrame with columns :data:`COLUMNS` (``case, region, metric, value,
        empty_state, empty_rule, nsd_tolerance_mm``); cases in the given (or sorted) order,
        regions in convention order, metrics in ``METRICS`` order (dice, hd95, nsd,
        sensitivity, specificity).
    """
    pred_dir = Path(pred_dir)
    case_ids = discover_cases(pred_dir) if cases is None else list(cases)
    check_empty_rule(empty_rule)
    tolerance = check_nsd_tolerance(nsd_tolerance_mm)
    _check_case_list(case_ids)
    # Resolve every path first so a missing file fails before minutes of metric computation.
    pairs = [(c, prediction_path(pred_dir, c), _reference(ref_dir, c)) for c in case_ids]
    rows: list[dict[str, float | str]] = []
    for case, pred_path, ref_path in tqdm(
        pairs, desc="evaluate", unit="case", file=sys.stderr, disable=not progress
    ):
        rows.extend(
            evaluate_file_pair(pred_path, ref_path, convention, empty_rule, case, tolerance)
        )
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    if out_csv is not None:
        write_csv_atomic(df, Path(out_csv))
    return df
