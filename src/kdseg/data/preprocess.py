"""Preprocess a dataset: validate every case, then write normalised arrays that train lazily.

Per case, identical for every method and every modality subset (geometry: :mod:`.geometry`):

1. reorient to the closest RAS orientation (axis flips and permutations only);
2. brain mask = voxels where any modality is nonzero; crop to its bounding box plus ``margin``
   (widened to keep every labelled voxel, see :func:`preprocess_case`);
3. optionally resample the crop to ``target_spacing`` (:mod:`kdseg.data.resample`);
4. per-modality z-score over the mask voxels; voxels outside the mask are 0;
5. stored label values -> contiguous class ids via the :class:`LabelConvention`.

The dataset pass reads one case at a time (memory stays at one case whatever the dataset size),
checks it, and writes ``.npy`` arrays that training memory-maps. Every problem of every case is
collected and reported together at the end, so one run lists all that is wrong; valid cases are
kept, and a rerun after fixing the data only redoes what changed.

Array axis order: spatial arrays are ``(X, Y, Z)`` (nibabel voxel order); images are
channel-first ``(C, X, Y, Z)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from nibabel.affines import voxel_sizes
from tqdm import tqdm

import kdseg
from kdseg.config import plain
from kdseg.data.adapters import DatasetSource, detect_brats_naming, find_dataset
from kdseg.data.geometry import (
    CaseGeometry,
    brain_bbox,
    mask_bbox,
    slices,
    to_canonical,
    union_box,
)
from kdseg.data.io import (
    LABEL_SUFFIX,
    CaseFiles,
    DataError,
    DataProblem,
    LoadedCase,
    check_modalities,
    read_case,
)
from kdseg.data.labels import LabelConvention
from kdseg.data.resample import resample_image, resample_labels, resample_mask, target_shape
from kdseg.fileio import atomic_path, remove_stale_temp_files

# Bump when preprocessing output changes for the same input: outputs written by another version
# are then redone instead of resumed.
PREPROCESS_VERSION = 2
ZSCORE_STD_FLOOR = 1e-8
IMAGE_INTERPOLATIONS = {"linear": 1, "bspline": 3}
LABEL_INTERPOLATIONS = ("nearest", "linear")


@dataclass(frozen=True)
class PreprocessOptions:
    """The ``preprocess`` block of the config.

    Attributes:
        margin: voxels kept around the brain's bounding box.
        target_spacing: resample every case to this spacing in mm ``(x, y, z)`` in RAS axis
            order; None keeps each case's own grid (no interpolation at all).
        image_interpolation: ``linear`` or ``bspline`` (cubic, nnU-Net's choice for images).
        label_interpolation: ``nearest`` or ``linear`` (nnU-Net's per-label linear: each
            class's one-hot mask is interpolated and the largest wins); also used to bring
            predictions back to the original grid.
    """

    margin: int = 2
    target_spacing: tuple[float, float, float] | None = None
    image_interpolation: str = "bspline"
    label_interpolation: str = "linear"

    def __post_init__(self) -> None:
        if self.margin < 0:
            raise ValueError(f"preprocess.crop_margin must be >= 0, got {self.margin}")
        if self.image_interpolation not in IMAGE_INTERPOLATIONS:
            raise ValueError(f"preprocess.image_interpolation: {self.image_interpolation!r} is "
                             f"not one of {list(IMAGE_INTERPOLATIONS)}")
        if self.label_interpolation not in LABEL_INTERPOLATIONS:
            raise ValueError(f"preprocess.label_interpolation: {self.label_interpolation!r} is "
                             f"not one of {list(LABEL_INTERPOLATIONS)}")
        if self.target_spacing is not None and (
            len(self.target_spacing) != 3 or min(self.target_spacing) <= 0
        ):
            raise ValueError(f"preprocess.target_spacing must be 3 positive numbers (mm), got "
                             f"{list(self.target_spacing)}")

    @classmethod
    def from_config(cls, block: dict[str, Any]) -> PreprocessOptions:
        spacing = block.get("target_spacing")
        return cls(
            margin=int(block.get("crop_margin", 2)),
            target_spacing=tuple(float(v) for v in spacing) if spacing else None,  # type: ignore[arg-type]
            image_interpolation=str(block.get("image_interpolation", "bspline")),
            label_interpolation=str(block.get("label_interpolation", "linear")),
        )


def zscore_in_mask(
    image: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Per-channel z-score of ``(C, X, Y, Z)`` using statistics of the ``(X, Y, Z)`` mask voxels.

    Population std (ddof 0), floored at 1e-8 so constant channels give 0 instead of NaN; voxels
    outside the mask are set to 0. Returns the float32 image and per-channel ``(mean, std)`` with
    the std actually divided by (i.e. after the floor).

    Bit-identical to ``inside = values[mask].astype(float64)``; ``mean = inside.mean()``;
    ``std = inside.std()``; ``out[c][mask] = (inside - mean) / std`` (a test checks it), but
    leaner: the mask is counted once; two float64 work buffers of the ``n`` mask voxels serve
    every channel instead of ~5 fresh ``(n,)`` arrays per channel; the gather and scatter go one
    ``X`` slab at a time, so they need no ``(n,)`` temporaries and stay in cache. On full-size
    cases: 5-25 % faster (the z-score is ~10 % of a case's preprocessing) and ~14 MiB less at
    the case's peak memory, which is reached here.
    """
    if image.ndim != 4 or mask.shape != image.shape[1:]:
        raise ValueError(
            f"expected image (C, X, Y, Z) and mask (X, Y, Z), got {image.shape} and {mask.shape}"
        )
    mask = mask.astype(bool, copy=False)
    per_slab = np.count_nonzero(mask.reshape(mask.shape[0], -1), axis=1)  # (X,)
    n = int(per_slab.sum())
    if n == 0:
        raise ValueError("no brain voxel left (z-score mask is empty; a target_spacing coarser "
                         "than the case?)")
    # (start, stop) of each X slab's mask voxels in C order, i.e. in the order of values[mask];
    # slabs without one are skipped.
    stops = np.cumsum(per_slab)
    slabs = [(x, int(stop - count), int(stop))
             for x, (count, stop) in enumerate(zip(per_slab, stops, strict=True)) if count]
    out = np.zeros(image.shape, dtype=np.float32)
    stats: list[tuple[float, float]] = []
    # float64: sums over millions of voxels. The same contiguous (n,) array summed by the same
    # pairwise np.add.reduce as ndarray.mean/std use, so mean and std are bit-identical to theirs.
    inside = np.empty(n, dtype=np.float64)  # (n,) mask voxels of one channel, then deviations
    squares = np.empty(n, dtype=np.float64)  # (n,) squared deviations
    # (n,) float32 z-scores, in the first half of `squares` once the sum of squares is taken:
    # the float64 -> float32 rounding of the old `out[c][mask] = float64 values`, done by the
    # ufunc's output cast instead (both are C's double -> float conversion).
    scores = squares.view(np.float32)[:n]
    for channel, values in enumerate(image):
        for x, start, stop in slabs:
            inside[start:stop] = values[x][mask[x]]
        mean = float(np.add.reduce(inside) / n)  # == inside.mean()
        np.subtract(inside, mean, out=inside)
        np.multiply(inside, inside, out=squares)
        std = max(float(np.sqrt(np.add.reduce(squares) / n)), ZSCORE_STD_FLOOR)  # == .std()
        np.divide(inside, std, out=scores, casting="same_kind")
        target = out[channel]
        for x, start, stop in slabs:
            target[x][mask[x]] = scores[start:stop]
        stats.append((mean, std))
    return out, stats


# ---------------------------------------------------------------------------------------------
# One case
# ---------------------------------------------------------------------------------------------


def preprocess_case(
    case: LoadedCase,
    convention: LabelConvention,
    margin: int = 2,
    options: PreprocessOptions | None = None,
) -> tuple[np.ndarray, np.ndarray | None, CaseGeometry, list[tuple[float, float]]]:
    """Reorient, crop, (resample,) normalise one case and map its labels to classes.

    The crop box is the brain box (any modality nonzero) plus the margin; if labelled voxels lie
    outside it (lesion labels on zero-intensity voxels at the brain edge), the box is widened to
    keep them, so restoring the preprocessed label reproduces the original exactly when nothing
    is resampled. ``options`` (if given) overrides ``margin``.

    Returns:
        image: float32 ``(C, x, y, z)`` in the preprocessed grid.
        classes: uint8 ``(x, y, z)`` class ids, or None when the case has no label.
        geometry: the :class:`CaseGeometry` to undo reorientation, crop and resampling.
        stats: per-channel ``(mean, std)`` of the z-score (of the raw or resampled intensities).
    """
    options = options or PreprocessOptions(margin=margin)
    image, canonical_affine = to_canonical(case.image, case.affine)
    try:
        box = brain_bbox(image, options.margin)
    except ValueError as err:
        raise DataError(f"{case.case_id}: {err} in any modality") from err
    classes = None
    if case.label is not None:
        label, _ = to_canonical(case.label, case.affine)
        if label.any():
            box = union_box(box, mask_bbox(label != 0))
        classes = convention.to_classes(label[slices(box)], source=case.case_id)
    cropped = image[(slice(None), *slices(box))]
    mask = (cropped != 0).any(axis=0)
    spacing = tuple(float(v) for v in voxel_sizes(canonical_affine))
    resampled_shape = None
    if options.target_spacing is not None:
        shape = target_shape(mask.shape, spacing, options.target_spacing)
        if shape != mask.shape:
            resampled_shape = shape
            cropped = resample_image(cropped, shape, IMAGE_INTERPOLATIONS[
                options.image_interpolation])
            mask = resample_mask(mask, shape)
            if classes is not None:
                classes = resample_labels(classes, shape, options.label_interpolation,
                                          convention.num_classes)
    normalised, stats = zscore_in_mask(cropped, mask)
    geometry = CaseGeometry(
        case_id=case.case_id,
        original_shape=_int3(case.image.shape[1:]),
        original_affine=np.asarray(case.affine, dtype=np.float64).tolist(),
        canonical_shape=_int3(image.shape[1:]),
        bbox=box,
        spacing=(spacing[0], spacing[1], spacing[2]),
        resampled_shape=resampled_shape,
    )
    return normalised, classes, geometry, stats


def _int3(values: Sequence[int]) -> tuple[int, int, int]:
    return (int(values[0]), int(values[1]), int(values[2]))


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


MAX_FOREGROUND_SAMPLES = 20_000  # enough patch centres to draw from; bounds memory per case


def foreground_path(out_dir: Path, case_id: str) -> Path:
    """``<case>_fg.npy``: sampled foreground voxel coordinates of a labelled case."""
    return Path(out_dir) / f"{case_id}_fg.npy"


def foreground_sample(classes: np.ndarray) -> np.ndarray:
    """Up to :data:`MAX_FOREGROUND_SAMPLES` foreground voxel coordinates ``(N, 3)`` of a class
    map (int16, or int32 for axes over 32767), drawn without replacement with a fixed seed.

    Stored at preprocessing time (as nnU-Net stores class locations) so that training's
    foreground oversampling never scans whole label maps and its memory per case stays small.
    """
    coords = np.argwhere(classes > 0)
    if len(coords) > MAX_FOREGROUND_SAMPLES:
        keep = np.random.default_rng(0).choice(len(coords), MAX_FOREGROUND_SAMPLES,
                                               replace=False)
        coords = coords[np.sort(keep)]
    dtype = np.int16 if max(classes.shape) <= np.iinfo(np.int16).max else np.int32
    return coords.astype(dtype)


def _source_files(files: CaseFiles) -> dict[str, dict[str, Any]]:
    """Provenance of the inputs per modality and label: absolute path, size, mtime (ns), and
    for a modality inside a 4-D file its volume index."""
    named = dict(files.images)
    if files.label is not None:
        named[LABEL_SUFFIX] = files.label
    out = {}
    for key, path in named.items():
        stat = path.stat()
        out[key] = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        if key in files.volumes:
            out[key]["volume"] = files.volumes[key]
    return out


def _settings(modalities: tuple[str, ...], convention: LabelConvention,
              options: PreprocessOptions) -> dict:
    """The case-json fields that must match for a previous output to be reused."""
    return {
        "modalities": list(modalities),
        "label_convention": convention.name,
        "label_values": list(convention.label_values),
        "margin": options.margin,
        # plain(): tuples -> lists, so the settings compare equal to their JSON round trip
        "resampling": {k: v for k, v in plain(asdict(options)).items() if k != "margin"},
        "preprocess_version": PREPROCESS_VERSION,
    }


def _up_to_date_record(out_dir: Path, files: CaseFiles, settings: dict) -> dict | None:
    """The existing case json if the outputs can be reused, else None.

    Reusable when all outputs exist, the settings match and every modality and the label come
    from the recorded file (path and, in a 4-D file, volume) with the recorded size and mtime
    (not a content hash: hashing would read every case again). A remapped modality or a moved
    dataset is therefore redone, and evaluation never reads a stale reference path.
    """
    image_path, label_path, json_path = case_paths(out_dir, files.case_id)
    labelled = [label_path, foreground_path(out_dir, files.case_id)]
    needed = [image_path, json_path] + (labelled if files.label is not None else [])
    if not all(path.is_file() for path in needed):
        return None
    try:
        record = json.loads(json_path.read_text())
    except (OSError, ValueError):
        return None  # unreadable record: redo the case
    if any(record.get(key) != value for key, value in settings.items()):
        return None
    if record.get("source_files") != _source_files(files):
        return None
    return record


def _write_case(
    case: LoadedCase,
    files: CaseFiles,
    convention: LabelConvention,
    options: PreprocessOptions,
    out_dir: Path,
) -> dict:
    """Preprocess and write one loaded case; returns its json record. The json is written last,
    so it only ever describes complete array files."""
    image, classes, geometry, stats = preprocess_case(case, convention, options=options)
    image_path, label_path, json_path = case_paths(out_dir, files.case_id)
    _atomic_save_npy(image_path, image)
    class_voxels = None
    fg_path = foreground_path(out_dir, files.case_id)
    if classes is not None:
        _atomic_save_npy(label_path, classes)
        _atomic_save_npy(fg_path, foreground_sample(classes))
        counts = np.bincount(classes.ravel(), minlength=convention.num_classes)
        class_voxels = [int(n) for n in counts]
    else:
        label_path.unlink(missing_ok=True)  # a stale label from an earlier labelled run
        fg_path.unlink(missing_ok=True)
    record = {
        **geometry.to_dict(),
        **_settings(case.modalities, convention, options),
        "available_modalities": list(case.available),
        "zscore": {
            m: {"mean": mean, "std": std}
            for m, (mean, std) in zip(case.modalities, stats, strict=True)
            if m in case.available
        },
        "source_files": _source_files(files),
        "class_voxels": class_voxels,
    }
    _atomic_write_bytes(json_path, _json_bytes(record))
    return record


def _manifest_row(record: dict, convention: LabelConvention, out_dir: Path) -> dict[str, Any]:
    image_path, label_path, json_path = case_paths(out_dir, record["case_id"])
    geometry = CaseGeometry.from_dict(record, source=str(json_path))
    shape = geometry.array_shape
    spacing = geometry.array_spacing
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
        "spacing_x": spacing[0],
        "spacing_y": spacing[1],
        "spacing_z": spacing[2],
        "modalities": "+".join(record.get("available_modalities") or record["modalities"]),
    }
    for name, count in zip(convention.class_names, counts, strict=True):
        row[f"voxels_{name}"] = count
    return row


def _fingerprint(
    manifest: pd.DataFrame,
    records: list[dict],
    source: DatasetSource,
    convention: LabelConvention,
    options: PreprocessOptions,
    manifest_sha1: str,
) -> dict[str, Any]:
    """Dataset summary written to dataset.json (intensity statistics are of raw voxels)."""
    modalities = source.modalities
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

    def mean_stat(m: str, key: str) -> float | None:
        values = [r["zscore"][m][key] for r in records if m in r["zscore"]]
        return float(np.mean(values)) if values else None

    return {
        "kdseg_version": kdseg.__version__,
        "preprocess_version": PREPROCESS_VERSION,
        "source": source.source,
        "unpaired": source.unpaired,
        "modalities": list(modalities),
        "cases_per_modality": {m: int(sum(m in r.get("available_modalities", modalities)
                                          for r in records)) for m in modalities},
        "label_convention": convention.name,
        "label_values": list(convention.label_values),
        "class_names": list(convention.class_names),
        "margin": options.margin,
        "target_spacing": list(options.target_spacing) if options.target_spacing else None,
        "n_cases": len(records),
        "n_labelled": len(labelled),
        "median_shape": [float(v) for v in np.median(shapes, axis=0)],
        "median_spacing": [float(v) for v in np.median(spacings, axis=0)],
        "intensity": {
            m: {"mean_of_case_means": mean_stat(m, "mean"),
                "mean_of_case_stds": mean_stat(m, "std")}
            for m in modalities
        },
        "class_voxel_fractions": fractions,
        "manifest_sha1": manifest_sha1,
    }


def preprocess_source(
    source: DatasetSource,
    out_dir: Path,
    convention: LabelConvention,
    options: PreprocessOptions | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Find, validate and preprocess every case of a dataset into ``out_dir``.

    Writes per case ``<case>_image.npy`` (float32 ``(C, x, y, z)``, channel order =
    ``source.modalities``; zero channels for modalities an unpaired case lacks),
    ``<case>_label.npy`` (uint8 classes ``(x, y, z)``) and ``<case>_fg.npy`` (sampled foreground
    coordinates ``(N, 3)`` for patch sampling; both labelled cases only) and ``<case>.json``
    (geometry, settings, z-score stats, source files, voxels per class); then ``manifest.csv``
    and ``dataset.json``. All writes are atomic.

    One pass reads each case once (memory stays at one case), checks it and writes it if it is
    valid. Every problem found across all cases (and by the adapter while finding them) is
    raised together at the end as one DataError with a ``case | file | problem`` table; in that
    case ``manifest.csv`` is not written, so nothing downstream runs on a partial dataset. Cases
    whose outputs exist and whose source files still have the recorded size and mtime are
    skipped (resume). Source files are only ever read.

    Returns the manifest DataFrame (one row per case, sorted by case id).
    """
    out_dir = Path(out_dir)
    options = options or PreprocessOptions()
    mods = check_modalities(source.modalities)
    settings = _settings(mods, convention, options)
    cases, problems = find_dataset(source)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out_dir)  # left by a killed earlier run: os.replace never happened
    records = []
    for files in tqdm(cases, desc="preprocess", unit="case", file=sys.stderr,
                      disable=not progress):
        record = _up_to_date_record(out_dir, files, settings)
        if record is None:
            case, found = read_case(files, mods, convention, allow_missing=source.unpaired)
            problems.extend(found)
            if case is None:
                continue
            try:
                record = _write_case(case, files, convention, options, out_dir)
            except ValueError as err:  # DataError too: e.g. nothing left after resampling
                problems.append(DataProblem(files.case_id, files.label or
                                            next(iter(files.images.values())),
                                            str(err).removeprefix(f"{files.case_id}: ")))
                continue
        records.append(record)
    if problems:  # one table, case by case; file paths shown relative to the dataset folder
        problems.sort(key=lambda problem: problem.case_id)
        for derived in ("manifest.csv", "dataset.json"):  # from an earlier, clean state of the
            (out_dir / derived).unlink(missing_ok=True)  # data: it no longer describes them
        error = DataError.from_problems(problems, Path(os.path.abspath(source.root)))
        hint = _label_hint(source, convention, problems)
        raise DataError(f"{error}\n{hint}" if hint else str(error), problems)
    if source.unpaired:
        _check_unpaired(records, mods, Path(source.root))

    manifest = pd.DataFrame([_manifest_row(r, convention, out_dir) for r in records])
    for name in convention.class_names:  # nullable ints: unlabelled cases have no counts
        manifest[f"voxels_{name}"] = manifest[f"voxels_{name}"].astype("Int64")
    csv_bytes = manifest.to_csv(index=False, lineterminator="\n").encode()
    fingerprint = _fingerprint(
        manifest, records, source, convention, options, hashlib.sha1(csv_bytes).hexdigest()
    )
    _atomic_write_bytes(out_dir / "dataset.json", _json_bytes(fingerprint))
    _atomic_write_bytes(out_dir / "manifest.csv", csv_bytes)  # last: the workflow's target
    return manifest


def _label_hint(source: DatasetSource, convention: LabelConvention,
                problems: list[DataProblem]) -> str:
    """A hint when BraTS 2023 files (ET = 3) are read with the 2017–2021 convention."""
    if (source.source == "brats" and convention.name == "brats"
            and any("unexpected label values [3]" in p.problem for p in problems)
            and (source.naming == "2023" or detect_brats_naming(source.root) == "2023")):
        return ("hint: these are BraTS 2023 files (ET = 3): set dataset.labels: brats2023")
    return ""


def _check_unpaired(records: list[dict], modalities: tuple[str, ...], root: Path) -> None:
    """An unpaired dataset needs cases of every modality (else a stream has nothing to draw)."""
    counts = {m: sum(m in r["available_modalities"] for r in records) for m in modalities}
    empty = [m for m, n in counts.items() if n == 0]
    if empty:
        raise DataError(f"{root}: unpaired dataset has no case with modality {empty} "
                        f"(cases per modality: {counts})")


def preprocess_dataset(
    root: Path,
    out_dir: Path,
    modalities: Sequence[str],
    convention: LabelConvention,
    margin: int = 2,
    progress: bool = True,
    require_label: bool = True,
) -> pd.DataFrame:
    """:func:`preprocess_source` for a BraTS-layout folder (naming detected) without
    resampling: the short form the built-in synthetic dataset and the tests use."""
    source = DatasetSource("brats", Path(root), tuple(modalities), require_label=require_label)
    return preprocess_source(source, out_dir, convention, PreprocessOptions(margin=margin),
                             progress)


def reference_labels(out_dir: Path, cases: Sequence[str]) -> dict[str, Path]:
    """The original label file of each case, as recorded by preprocessing (the evaluation's
    references, whatever the dataset's layout); DataError naming the record if it has none."""
    out = {}
    for case in cases:
        json_path = case_paths(out_dir, case)[2]
        try:
            record = json.loads(json_path.read_text())
            out[case] = Path(record["source_files"][LABEL_SUFFIX]["path"])
        except FileNotFoundError:
            raise DataError(f"{json_path}: preprocessed case record not found") from None
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{json_path}: records no label file for case {case!r} "
                            f"(an unlabelled case cannot be evaluated)") from None
    return out


def cases_with_modalities(out_dir: Path, cases: Sequence[str],
                          modalities: Sequence[str]) -> list[str]:
    """The ``cases`` (order kept) whose preprocessed record holds all ``modalities``; in a
    paired dataset that is every case."""
    manifest = pd.read_csv(Path(out_dir) / "manifest.csv", dtype={"case": str})
    if "modalities" not in manifest:
        return list(cases)
    have = {c: set(str(m).split("+")) for c, m in zip(manifest["case"], manifest["modalities"],
                                                     strict=True)}
    needed = set(modalities)
    return [c for c in cases if needed <= have.get(c, needed)]


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
