"""Preprocessing (reorient, crop, z-score, label -> class) and its exact inverse for predictions.

Per case, identical for every method and every modality subset:

1. reorient to the closest RAS orientation (``nib.as_closest_canonical`` semantics: axis flips and
   permutations only, never resampling, so every voxel keeps its value and is restorable);
2. brain mask = voxels where any modality is nonzero; crop to its bounding box plus ``margin``
   (widened to keep every labelled voxel, see :func:`preprocess_case`);
3. per-modality z-score over the mask voxels inside the crop; voxels outside the mask are 0;
4. stored label values -> contiguous class ids via the :class:`LabelConvention`.

:class:`CaseGeometry` records what is needed to undo 1–2 so that :func:`restore_prediction` puts a
prediction back voxel-exactly into the original file's grid.

Array axis order: spatial arrays are ``(X, Y, Z)`` (nibabel voxel order); images are
channel-first ``(C, X, Y, Z)``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.affines import voxel_sizes
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)
from scipy import ndimage
from tqdm import tqdm

import kdseg
from kdseg.data.io import (
    LABEL_SUFFIX,
    CaseFiles,
    DataError,
    DataProblem,
    LoadedCase,
    check_modalities,
    load_case,
    read_case,
    scan_cases,
)
from kdseg.data.labels import LabelConvention
from kdseg.fileio import atomic_path, remove_stale_temp_files

# Bump when preprocessing output changes for the same input: outputs written by another version
# are then redone instead of resumed.
PREPROCESS_VERSION = 1
ZSCORE_STD_FLOOR = 1e-8
_RAS = axcodes2ornt(("R", "A", "S"))

Box = tuple[tuple[int, int], ...]


# ---------------------------------------------------------------------------------------------
# Geometry record
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseGeometry:
    """Everything needed to map the cropped canonical grid back to the original file grid.

    Attributes:
        original_shape: ``(X, Y, Z)`` of the source files.
        original_affine: their 4x4 voxel-to-world affine (mm) as nested lists.
        canonical_shape: shape after reorientation to closest RAS.
        bbox: crop box in canonical voxel coordinates, half-open ``(start, stop)`` per axis.
        spacing: canonical voxel spacing in mm, per canonical axis.
    """

    case_id: str
    original_shape: tuple[int, int, int]
    original_affine: list[list[float]]
    canonical_shape: tuple[int, int, int]
    bbox: Box
    spacing: tuple[float, float, float]

    @property
    def crop_shape(self) -> tuple[int, ...]:
        """Shape ``(x, y, z)`` of the cropped canonical grid."""
        return tuple(stop - start for start, stop in self.bbox)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (tuples become lists)."""
        return {
            "case_id": self.case_id,
            "original_shape": list(self.original_shape),
            "original_affine": [list(row) for row in self.original_affine],
            "canonical_shape": list(self.canonical_shape),
            "bbox": [list(axis) for axis in self.bbox],
            "spacing": list(self.spacing),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "geometry") -> CaseGeometry:
        """Inverse of :meth:`to_dict`; extra keys (the rest of a case json) are ignored.

        ``source`` names the file the dict came from, for the error message.
        """
        needed = (
            "case_id",
            "original_shape",
            "original_affine",
            "canonical_shape",
            "bbox",
            "spacing",
        )
        missing = [key for key in needed if key not in d]
        if missing:
            raise DataError(f"{source}: geometry record lacks keys {missing}")
        try:
            return cls(
                case_id=str(d["case_id"]),
                original_shape=_int3(d["original_shape"]),
                original_affine=[[float(v) for v in row] for row in d["original_affine"]],
                canonical_shape=_int3(d["canonical_shape"]),
                bbox=tuple((int(start), int(stop)) for start, stop in d["bbox"]),
                spacing=(float(d["spacing"][0]), float(d["spacing"][1]), float(d["spacing"][2])),
            )
        except (TypeError, ValueError, IndexError) as err:
            raise DataError(f"{source}: malformed geometry record ({err})") from err


def _int3(values: Sequence[int]) -> tuple[int, int, int]:
    if len(values) != 3:
        raise ValueError(f"expected 3 values, got {list(values)}")
    return (int(values[0]), int(values[1]), int(values[2]))


# ---------------------------------------------------------------------------------------------
# Pure array operations
# ---------------------------------------------------------------------------------------------


def _reorient(data: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """``apply_orientation`` on the spatial axes of ``(X, Y, Z)`` or ``(C, X, Y, Z)`` data."""
    if data.ndim == 3:
        return apply_orientation(data, ornt)
    if data.ndim == 4:
        # apply_orientation transforms the leading three axes, so put the channel axis last.
        moved = apply_orientation(np.moveaxis(data, 0, -1), ornt)
        return np.moveaxis(moved, -1, 0)
    raise ValueError(f"expected (X, Y, Z) or (C, X, Y, Z) data, got shape {data.shape}")


def to_canonical(image: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient ``(X, Y, Z)`` or ``(C, X, Y, Z)`` voxels to the closest RAS orientation.

    Pure axis flips/permutations (``nib.as_closest_canonical`` semantics), no resampling: every
    voxel keeps its value and world position. Returns ``(data, canonical_affine)``; ``data`` is a
    C-contiguous copy with the same dtype.
    """
    ornt = ornt_transform(io_orientation(affine), _RAS)
    data = np.ascontiguousarray(_reorient(image, ornt))
    canonical_affine = np.asarray(affine, dtype=np.float64) @ inv_ornt_aff(ornt, image.shape[-3:])
    return data, canonical_affine


def from_canonical(data: np.ndarray, original_affine: np.ndarray) -> np.ndarray:
    """Undo :func:`to_canonical` for ``(X, Y, Z)`` or ``(C, X, Y, Z)`` data in the canonical grid.

    The orientation is recomputed from the original affine, so only that affine is needed.
    """
    ornt = ornt_transform(_RAS, io_orientation(original_affine))
    return np.ascontiguousarray(_reorient(data, ornt))


def brain_bbox(image: np.ndarray, margin: int = 0) -> Box:
    """Bounding box of the nonzero voxels of ``(X, Y, Z)`` or union over channels of
    ``(C, X, Y, Z)``, grown by ``margin`` voxels and clipped to the array; half-open per axis.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if image.ndim not in (3, 4):
        raise ValueError(f"expected (X, Y, Z) or (C, X, Y, Z) data, got shape {image.shape}")
    mask = image != 0
    if mask.ndim == 4:
        mask = mask.any(axis=0)
    return mask_bbox(mask, margin)


def mask_bbox(mask: np.ndarray, margin: int = 0) -> Box:
    """Half-open bounding box of a boolean ``(X, Y, Z)`` mask, grown by ``margin`` and clipped."""
    objects = ndimage.find_objects(mask.astype(np.uint8))
    if not objects:
        raise ValueError("no nonzero voxels: the bounding box is undefined")
    return tuple(
        (max(0, s.start - margin), min(size, s.stop + margin))
        for s, size in zip(objects[0], mask.shape, strict=True)
    )


def _union_box(a: Box, b: Box) -> Box:
    return tuple((min(sa, sb), max(ea, eb)) for (sa, ea), (sb, eb) in zip(a, b, strict=True))


def _slices(box: Box) -> tuple[slice, ...]:
    return tuple(slice(start, stop) for start, stop in box)


def zscore_in_mask(
    image: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Per-channel z-score of ``(C, X, Y, Z)`` using statistics of the ``(X, Y, Z)`` mask voxels.

    Population std (ddof 0), floored at 1e-8 so constant channels give 0 instead of NaN; voxels
    outside the mask are set to 0. Returns the float32 image and per-channel ``(mean, std)`` with
    the std actually divided by (i.e. after the floor).
    """
    if image.ndim != 4 or mask.shape != image.shape[1:]:
        raise ValueError(
            f"expected image (C, X, Y, Z) and mask (X, Y, Z), got {image.shape} and {mask.shape}"
        )
    mask = mask.astype(bool, copy=False)
    if not mask.any():
        raise ValueError("z-score mask is empty")
    out = np.zeros(image.shape, dtype=np.float32)
    stats: list[tuple[float, float]] = []
    for channel, values in enumerate(image):
        inside = values[mask].astype(np.float64)  # float64: sums over millions of voxels
        mean = float(inside.mean())
        std = max(float(inside.std()), ZSCORE_STD_FLOOR)
        out[channel][mask] = (inside - mean) / std
        stats.append((mean, std))
    return out, stats


# ---------------------------------------------------------------------------------------------
# One case
# ---------------------------------------------------------------------------------------------


def preprocess_case(
    case: LoadedCase, convention: LabelConvention, margin: int = 2
) -> tuple[np.ndarray, np.ndarray | None, CaseGeometry, list[tuple[float, float]]]:
    """Reorient, crop, normalise one case and map its labels to classes.

    The crop box is the brain box (any modality nonzero) plus ``margin``; if labelled voxels lie
    outside it (lesion labels on zero-intensity voxels at the brain edge), the box is widened to
    keep them, so restoring the preprocessed label always reproduces the original exactly.

    Returns:
        image: float32 ``(C, x, y, z)`` in the cropped canonical grid.
        classes: uint8 ``(x, y, z)`` class ids, or None when the case has no label.
        geometry: the :class:`CaseGeometry` to undo the reorientation and crop.
        stats: per-channel ``(mean, std)`` of the z-score (raw intensities).
    """
    image, canonical_affine = to_canonical(case.image, case.affine)
    try:
        box = brain_bbox(image, margin)
    except ValueError as err:
        raise DataError(f"{case.case_id}: {err} in any modality") from err
    classes = None
    if case.label is not None:
        label, _ = to_canonical(case.label, case.affine)
        if label.any():
            box = _union_box(box, mask_bbox(label != 0))
        classes = convention.to_classes(label[_slices(box)], source=case.case_id)
    cropped = image[(slice(None), *_slices(box))]
    normalised, stats = zscore_in_mask(cropped, (cropped != 0).any(axis=0))
    sx, sy, sz = (float(v) for v in voxel_sizes(canonical_affine))
    geometry = CaseGeometry(
        case_id=case.case_id,
        original_shape=_int3(case.image.shape[1:]),
        original_affine=np.asarray(case.affine, dtype=np.float64).tolist(),
        canonical_shape=_int3(image.shape[1:]),
        bbox=box,
        spacing=(sx, sy, sz),
    )
    return normalised, classes, geometry, stats


def restore_prediction(
    classes: np.ndarray, geometry: CaseGeometry, convention: LabelConvention
) -> nib.Nifti1Image:
    """Put a class-id prediction back into the original file grid as stored label values.

    ``classes``: integer ``(x, y, z)`` in the cropped canonical grid (shape = bbox size). Voxels
    outside the crop box become background (0). Returns a uint8 ``Nifti1Image`` with the original
    shape and affine (qform and sform both set, code 1 = scanner, units mm).
    """
    where = f"{geometry.case_id}: prediction"
    if classes.shape != geometry.crop_shape:
        raise DataError(
            f"{where} shape {classes.shape} differs from the crop box size {geometry.crop_shape}"
        )
    if classes.dtype.kind not in "iub":
        raise DataError(f"{where} must hold integer class ids, got dtype {classes.dtype}")
    if classes.size and (classes.min() < 0 or classes.max() >= convention.num_classes):
        raise DataError(
            f"{where} holds class ids outside 0..{convention.num_classes - 1} "
            f"(min {classes.min()}, max {classes.max()})"
        )
    canonical = np.zeros(geometry.canonical_shape, dtype=np.uint8)
    canonical[_slices(geometry.bbox)] = convention.to_labels(classes)
    affine = np.asarray(geometry.original_affine, dtype=np.float64)
    data = from_canonical(canonical, affine)
    if data.shape != geometry.original_shape:  # only a corrupt geometry record gets here
        raise DataError(
            f"{geometry.case_id}: geometry record inconsistent: restored shape {data.shape} "
            f"!= original shape {geometry.original_shape}"
        )
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(np.uint8)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_zooms(tuple(float(v) for v in voxel_sizes(affine)))
    return img


# ---------------------------------------------------------------------------------------------
# Atomic file writing (kdseg.fileio). Outputs are fsynced before the rename: resume trusts any
# case whose files exist, so after a power loss a renamed-but-empty .npy or .json must not exist.
# ---------------------------------------------------------------------------------------------


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path, fsync=True) as tmp:
        np.save(tmp, array, allow_pickle=False)


def _atomic_write_bytes(path: Path, content: bytes) -> None:
    with atomic_path(path, fsync=True) as tmp:
        tmp.write_bytes(content)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------


def case_paths(out_dir: Path, case_id: str) -> tuple[Path, Path, Path]:
    """``(image .npy, label .npy, case .json)`` output paths of one case."""
    out_dir = Path(out_dir)
    return (
        out_dir / f"{case_id}_image.npy",
        out_dir / f"{case_id}_label.npy",
        out_dir / f"{case_id}.json",
    )


def _source_files(files: CaseFiles) -> dict[str, dict[str, Any]]:
    """Provenance of the inputs: absolute path, size and mtime (ns) per modality and label."""
    named = dict(files.images)
    if files.label is not None:
        named[LABEL_SUFFIX] = files.label
    out = {}
    for key, path in named.items():
        stat = path.stat()
        out[key] = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return out


def _settings(modalities: tuple[str, ...], convention: LabelConvention, margin: int) -> dict:
    """The case-json fields that must match for a previous output to be reused."""
    return {
        "modalities": list(modalities),
        "label_convention": convention.name,
        "margin": margin,
        "preprocess_version": PREPROCESS_VERSION,
    }


def _up_to_date_record(out_dir: Path, files: CaseFiles, settings: dict) -> dict | None:
    """The existing case json if the outputs can be reused, else None.

    Reusable when all outputs exist, the settings match and every source file has the recorded
    size and mtime (size+mtime, not a content hash: hashing would read every case again).
    """
    image_path, label_path, json_path = case_paths(out_dir, files.case_id)
    needed = [image_path, json_path] + ([label_path] if files.label is not None else [])
    if not all(path.is_file() for path in needed):
        return None
    try:
        record = json.loads(json_path.read_text())
    except (OSError, ValueError):
        return None  # unreadable record: redo the case
    if any(record.get(key) != value for key, value in settings.items()):
        return None
    recorded = record.get("source_files", {})
    current = _source_files(files)
    if set(recorded) != set(current):
        return None
    for key, info in current.items():
        if (recorded[key].get("size"), recorded[key].get("mtime_ns")) != (
            info["size"],
            info["mtime_ns"],
        ):
            return None
    return record


def _process_case(
    files: CaseFiles,
    modalities: tuple[str, ...],
    convention: LabelConvention,
    margin: int,
    out_dir: Path,
) -> dict:
    """Load, preprocess and write one case; returns its json record. The json is written last,
    so it only ever describes complete array files."""
    case = load_case(files, modalities, convention)
    image, classes, geometry, stats = preprocess_case(case, convention, margin)
    image_path, label_path, json_path = case_paths(out_dir, files.case_id)
    _atomic_save_npy(image_path, image)
    class_voxels = None
    if classes is not None:
        _atomic_save_npy(label_path, classes)
        counts = np.bincount(classes.ravel(), minlength=convention.num_classes)
        class_voxels = [int(n) for n in counts]
    else:
        label_path.unlink(missing_ok=True)  # a stale label from an earlier labelled run
    record = {
        **geometry.to_dict(),
        **_settings(modalities, convention, margin),
        "zscore": {
            m: {"mean": mean, "std": std} for m, (mean, std) in zip(modalities, stats, strict=True)
        },
        "source_files": _source_files(files),
        "class_voxels": class_voxels,
    }
    _atomic_write_bytes(json_path, _json_bytes(record))
    return record


def _validate(
    cases: list[CaseFiles],
    modalities: tuple[str, ...],
    convention: LabelConvention,
    todo: list[bool],
    progress: bool,
) -> list[DataProblem]:
    """Read and check every case still to process; collect (never raise) per-case problems."""
    problems: list[DataProblem] = []
    pending = [files for files, needed in zip(cases, todo, strict=True) if needed]
    for files in tqdm(pending, desc="validate", unit="case", file=sys.stderr, disable=not progress):
        _, found = read_case(files, modalities, convention)
        problems.extend(found)
    return problems


def _manifest_row(record: dict, convention: LabelConvention, out_dir: Path) -> dict[str, Any]:
    image_path, label_path, json_path = case_paths(out_dir, record["case_id"])
    geometry = CaseGeometry.from_dict(record, source=str(json_path))
    shape = geometry.crop_shape
    counts = record["class_voxels"] or [None] * convention.num_classes
    row: dict[str, Any] = {
        "case": geometry.case_id,
        # Paths relative to out_dir so the preprocessed folder can be moved as a whole.
        "image": image_path.name,
        "label": label_path.name if record["class_voxels"] is not None else "",
        "geometry": json_path.name,
        "shape_x": shape[0],
        "shape_y": shape[1],
        "shape_z": shape[2],
        "spacing_x": geometry.spacing[0],
        "spacing_y": geometry.spacing[1],
        "spacing_z": geometry.spacing[2],
    }
    for name, count in zip(convention.class_names, counts, strict=True):
        row[f"voxels_{name}"] = count
    return row


def _fingerprint(
    manifest: pd.DataFrame,
    records: list[dict],
    modalities: tuple[str, ...],
    convention: LabelConvention,
    margin: int,
    manifest_sha1: str,
) -> dict[str, Any]:
    """Dataset summary written to dataset.json (intensity statistics are of raw voxels)."""
    shapes = manifest[["shape_x", "shape_y", "shape_z"]].to_numpy()
    spacings = manifest[["spacing_x", "spacing_y", "spacing_z"]].to_numpy()
    labelled = [r["class_voxels"] for r in records if r["class_voxels"] is not None]
    fractions = None
    if labelled:
        totals = np.sum(labelled, axis=0, dtype=np.int64)
        fractions = {
            name: float(n) / float(totals.sum())
            for name, n in zip(convention.class_names, totals, strict=True)
        }
    return {
        "kdseg_version": kdseg.__version__,
        "preprocess_version": PREPROCESS_VERSION,
        "modalities": list(modalities),
        "label_convention": convention.name,
        "class_names": list(convention.class_names),
        "margin": margin,
        "n_cases": len(records),
        "n_labelled": len(labelled),
        "median_shape": [float(v) for v in np.median(shapes, axis=0)],
        "median_spacing": [float(v) for v in np.median(spacings, axis=0)],
        "intensity": {
            m: {
                "mean_of_case_means": float(np.mean([r["zscore"][m]["mean"] for r in records])),
                "mean_of_case_stds": float(np.mean([r["zscore"][m]["std"] for r in records])),
            }
            for m in modalities
        },
        "class_voxel_fractions": fractions,
        "manifest_sha1": manifest_sha1,
    }


def preprocess_dataset(
    root: Path,
    out_dir: Path,
    modalities: Sequence[str],
    convention: LabelConvention,
    margin: int = 2,
    progress: bool = True,
    require_label: bool = True,
) -> pd.DataFrame:
    """Validate a BraTS-layout dataset, then preprocess every case into ``out_dir``.

    Writes per case ``<case>_image.npy`` (float32 ``(C, x, y, z)``, channel order =
    ``modalities``), ``<case>_label.npy`` (uint8 classes ``(x, y, z)``, labelled cases only) and
    ``<case>.json`` (geometry, settings, z-score stats, source files, voxels per class); then
    ``manifest.csv`` and ``dataset.json``. All writes are atomic.

    Validation comes first and reads every case that is not up to date (so those are read twice,
    once to check and once to process; memory stays at one case). All problems are collected and
    raised together as one DataError before anything is written. Cases whose outputs exist and
    whose source files still have the recorded size and mtime are skipped (resume).

    Returns the manifest DataFrame (one row per case, sorted by case id).
    """
    root, out_dir = Path(root), Path(out_dir)
    mods = check_modalities(modalities)
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    settings = _settings(mods, convention, margin)
    cases, problems = scan_cases(root, mods, require_label)
    reusable = [_up_to_date_record(out_dir, files, settings) for files in cases]
    todo = [record is None for record in reusable]
    problems += _validate(cases, mods, convention, todo, progress)
    if problems:
        raise DataError.from_problems(problems, root)

    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out_dir)  # left by a killed earlier run: os.replace never happened
    records = []
    for files, record in tqdm(
        list(zip(cases, reusable, strict=True)),
        desc="preprocess",
        unit="case",
        file=sys.stderr,
        disable=not progress,
    ):
        records.append(record or _process_case(files, mods, convention, margin, out_dir))

    manifest = pd.DataFrame([_manifest_row(r, convention, out_dir) for r in records])
    for name in convention.class_names:  # nullable ints: unlabelled cases have no counts
        manifest[f"voxels_{name}"] = manifest[f"voxels_{name}"].astype("Int64")
    csv_bytes = manifest.to_csv(index=False, lineterminator="\n").encode()
    _atomic_write_bytes(out_dir / "manifest.csv", csv_bytes)
    fingerprint = _fingerprint(
        manifest, records, mods, convention, margin, hashlib.sha1(csv_bytes).hexdigest()
    )
    _atomic_write_bytes(out_dir / "dataset.json", _json_bytes(fingerprint))
    return manifest


def load_preprocessed(
    out_dir: Path, case_id: str, mmap: bool = True
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Read one preprocessed case -> (image ``(C, x, y, z)``, classes ``(x, y, z)`` or None,
    case json dict). With ``mmap`` the arrays are read-only memory maps (``mmap_mode="r"``)."""
    image_path, label_path, json_path = case_paths(out_dir, case_id)
    for path in (json_path, image_path):
        if not path.is_file():
            raise DataError(f"{path}: preprocessed file not found (run preprocessing first)")
    try:
        record = json.loads(json_path.read_text())
    except ValueError as err:
        raise DataError(f"{json_path}: not valid JSON ({err})") from err
    mode = "r" if mmap else None
    image = np.load(image_path, mmap_mode=mode, allow_pickle=False)
    if image.ndim != 4:
        raise DataError(f"{image_path}: expected a (C, x, y, z) array, got shape {image.shape}")
    classes = None
    if record.get("class_voxels") is not None:
        if not label_path.is_file():
            raise DataError(f"{label_path}: preprocessed label not found but the case is labelled")
        classes = np.load(label_path, mmap_mode=mode, allow_pickle=False)
        if classes.shape != image.shape[1:]:
            raise DataError(
                f"{label_path}: label shape {classes.shape} differs from image shape "
                f"{image.shape[1:]}"
            )
    return image, classes, record
