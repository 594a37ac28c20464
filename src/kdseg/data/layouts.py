"""The synthetic dataset written in the folder layouts of real datasets, for adapter tests.

:func:`write_layout` writes the cases of :mod:`kdseg.data.synthetic` (same spec, same cases) as

* ``brats``: ``<out>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``, ids ``SYN_0000`` ..., labels
  {0, 1 NCR, 2 ED, 4 ET}; with the default geometry this *is* :func:`synthesize_dataset`.
* ``brats2023``: BraTS 2023 GLI, ``<out>/<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz``, ids
  ``BraTS-GLI-00000-000`` ..., labels {0, 1 NCR, 2 ED, 3 ET}.
* ``msd``: Medical Segmentation Decathlon Task01_BrainTumour, ``<out>/dataset.json``,
  ``<out>/imagesTr/BRATS_001.nii.gz`` (one 4-D float32 image ``(X, Y, Z, 4)``, volumes FLAIR,
  T1w, t1gd, T2w) and ``<out>/labelsTr/BRATS_001.nii.gz`` (labels {0, 1 edema,
  2 non-enhancing tumour, 3 enhancing tumour}).
* ``manifest``: ``<out>/images/<case>_{t1w,t1gd,t2w,flair}.nii.gz``,
  ``<out>/labels/<case>_label.nii.gz`` with a non-BraTS label map {0, 10 NCR, 20 ED, 30 ET}, and
  ``<out>/manifest.csv`` (``case,t1w,t1gd,t2w,flair,label``, paths relative to ``<out>``).
* ``unpaired``: like ``manifest`` but one modality per case (even cases ``t1ce``, odd cases
  ``flair``), labels ``<out>/labels/<case>_seg.nii.gz`` in {0, 1, 2, 4}, ``manifest.csv``
  ``case,t1ce,flair,label`` with the missing modality's cell empty.

and optionally changes the geometry of the written files (``orientation``, ``anisotropic``; see
:func:`case_volumes`). All modalities and the label of a case always share one shape and affine.
All files are gzipped NIfTI-1 with qform and sform code 1, as :mod:`kdseg.data.synthetic` writes.

Array conventions: generated arrays are ``(X, Y, Z)`` in the generator's LPS-like voxel order
(its affine is ``diag(-sx, -sy, sz)`` plus an origin, i.e. ``nib.aff2axcodes`` gives
``('L', 'P', 'S')``); the MSD image stacks its modalities *last*: ``(X, Y, Z, 4)``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import asdict, fields
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt
from numpy.typing import NDArray
from tqdm import tqdm

from kdseg.data import synthetic
from kdseg.data.synthetic import (
    GENERATOR_VERSION,
    MODALITIES,
    SyntheticDatasetMismatchError,
    SyntheticSpec,
)
from kdseg.fileio import TEMP_GLOB, atomic_path, remove_stale_temp_files, write_text_atomic

LAYOUTS: tuple[str, ...] = ("brats", "brats2023", "msd", "manifest", "unpaired")
ORIENTATIONS: tuple[str, ...] = ("native", "lps", "ras", "oblique", "permuted", "mixed")
MIXED_CYCLE: tuple[str, ...] = ("native", "ras", "oblique", "permuted")
"""Orientation of case ``i`` under ``mixed``: ``MIXED_CYCLE[i % 4]``."""

RECORD_NAME = "synthetic_layout.json"
"""Record of a :func:`write_layout` output folder (not ``synthetic.json``, so that
:func:`synthesize_dataset` refuses such a folder and :func:`write_layout` refuses its folders)."""
LAYOUT_VERSION = "1"
README_NAME = "README.txt"

OBLIQUE_DEGREES: tuple[float, float] = (12.0, 5.0)
"""``oblique``: rotation about the world z axis, then about the x axis, around the volume centre."""
PERMUTATION: tuple[int, int, int] = (2, 0, 1)
"""``permuted``: file voxel axis ``k`` is generated voxel axis ``PERMUTATION[k]``."""

BRATS2023_NAMES: dict[str, str] = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
MSD_ORDER: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
"""Generator modality of MSD volume ``k`` (MSD names: FLAIR, T1w, t1gd, T2w)."""
MSD_MODALITY: dict[str, str] = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
MSD_LABELS: dict[str, str] = {
    "0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"
}
MANIFEST_NAMES: dict[str, str] = {"t1": "t1w", "t1ce": "t1gd", "t2": "t2w", "flair": "flair"}
UNPAIRED_MODALITIES: tuple[str, str] = ("t1ce", "flair")
"""``unpaired``: case ``i`` carries only ``UNPAIRED_MODALITIES[i % 2]``."""

LABEL_MAPS: dict[str, dict[int, int]] = {
    "brats": {0: 0, 1: 1, 2: 2, 4: 4},
    "brats2023": {0: 0, 1: 1, 2: 2, 4: 3},
    "msd": {0: 0, 2: 1, 1: 2, 4: 3},
    "manifest": {0: 0, 1: 10, 2: 20, 4: 30},
    "unpaired": {0: 0, 1: 1, 2: 2, 4: 4},
}
"""Generator (BraTS 2017-2021) label value -> stored label value, per layout."""

_LABEL_TEXT: dict[str, str] = {
    "brats": "0 background, 1 necrotic/non-enhancing core (NCR), 2 edema (ED), "
             "4 enhancing tumour (ET) (BraTS 2017-2021)",
    "brats2023": "0 background, 1 NCR, 2 ED, 3 ET (BraTS 2023)",
    "msd": "0 background, 1 edema, 2 non-enhancing tumor, 3 enhancing tumour (MSD Task01)",
    "manifest": "0 background, 10 NCR, 20 ED, 30 ET (not a BraTS numbering: give it as "
                "dataset.labels)",
    "unpaired": "0 background, 1 NCR, 2 ED, 4 ET (BraTS 2017-2021)",
}
_LAYOUT_TEXT: dict[str, str] = {
    "brats": "<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz, case ids SYN_0000 ...",
    "brats2023": "<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz (t1n=T1, t1c=T1ce, t2w=T2, "
                 "t2f=FLAIR), case ids BraTS-GLI-00000-000 ...",
    "msd": "dataset.json; imagesTr/BRATS_001.nii.gz: one 4-D image (X, Y, Z, 4), volumes "
           "0 FLAIR, 1 T1w, 2 t1gd (T1ce), 3 T2w; labelsTr/BRATS_001.nii.gz",
    "manifest": "manifest.csv (case,t1w,t1gd,t2w,flair,label; paths relative to this folder); "
                "images/<case>_{t1w,t1gd,t2w,flair}.nii.gz (t1w=T1, t1gd=T1ce); "
                "labels/<case>_label.nii.gz; case ids SYN_0000 ...",
    "unpaired": "manifest.csv (case,t1ce,flair,label; the missing modality's cell is empty); "
                "images/<case>_t1ce.nii.gz for even cases, images/<case>_flair.nii.gz for odd "
                "cases; labels/<case>_seg.nii.gz; case ids SYN_0000 ...",
}

_SUBFOLDERS: dict[str, tuple[str, str]] = {
    "msd": ("imagesTr", "labelsTr"),
    "manifest": ("images", "labels"),
    "unpaired": ("images", "labels"),
}

Affine = NDArray[np.float64]


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------
def layout_case_id(layout: str, index: int) -> str:
    """Case id of case ``index`` in ``layout``: ``SYN_0000``, ``BraTS-GLI-00000-000`` or
    ``BRATS_001`` (MSD numbers from 1)."""
    _check_choice("layout", layout, LAYOUTS)
    if index < 0:
        raise ValueError(f"case index must be >= 0, got {index}")
    if layout == "brats2023":
        return f"BraTS-GLI-{index:05d}-000"
    if layout == "msd":
        return f"BRATS_{index + 1:03d}"
    return synthetic.case_id(index)


def layout_case_files(out_dir: Path, layout: str, index: int) -> dict[str, Path]:
    """Files of case ``index``: generator key (a modality of ``MODALITIES`` or ``"seg"``) -> path.

    For ``msd`` the keys are ``"image"`` (the 4-D image) and ``"seg"``; for ``unpaired`` only the
    case's one modality and ``"seg"``.
    """
    out_dir = Path(out_dir)
    cid = layout_case_id(layout, index)
    if layout == "brats":
        return synthetic.case_paths(out_dir, index)
    if layout == "brats2023":
        names = {**BRATS2023_NAMES, "seg": "seg"}
        return {key: out_dir / cid / f"{cid}-{names[key]}.nii.gz" for key in (*MODALITIES, "seg")}
    if layout == "msd":
        return {"image": out_dir / "imagesTr" / f"{cid}.nii.gz",
                "seg": out_dir / "labelsTr" / f"{cid}.nii.gz"}
    if layout == "manifest":
        files = {m: out_dir / "images" / f"{cid}_{MANIFEST_NAMES[m]}.nii.gz" for m in MODALITIES}
        return {**files, "seg": out_dir / "labels" / f"{cid}_label.nii.gz"}
    modality = UNPAIRED_MODALITIES[index % 2]
    return {modality: out_dir / "images" / f"{cid}_{modality}.nii.gz",
            "seg": out_dir / "labels" / f"{cid}_seg.nii.gz"}


def case_orientation(orientation: str, index: int) -> str:
    """The orientation case ``index`` gets: ``orientation`` itself, or ``MIXED_CYCLE[index % 4]``
    for ``mixed``."""
    _check_choice("orientation", orientation, ORIENTATIONS)
    return MIXED_CYCLE[index % len(MIXED_CYCLE)] if orientation == "mixed" else orientation


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------
def drop_alternate_slices(data: np.ndarray, affine: Affine) -> tuple[np.ndarray, Affine]:
    """Keep slices ``0, 2, 4, ...`` along voxel axis 2 and double that axis' spacing.

    ``data`` is ``(X, Y, Z, ...)``; returns ``(X, Y, ceil(Z / 2), ...)`` and the 4x4 affine whose
    third column is doubled (slice 0 keeps its world position, so the origin is unchanged).
    """
    new_affine = np.array(affine, dtype=np.float64)
    new_affine[:3, 2] *= 2
    return np.ascontiguousarray(data[:, :, ::2]), new_affine


def _apply_ornt(
    data: np.ndarray, affine: Affine, transform: np.ndarray
) -> tuple[np.ndarray, Affine]:
    """Reorder ``data``'s first three axes by a nibabel orientation ``transform`` (rows: input
    axis -> [output axis, flip]) and adjust ``affine`` so every voxel keeps its world position."""
    new_data = ornt.apply_orientation(data, transform)
    new_affine = np.asarray(affine, dtype=np.float64) @ ornt.inv_ornt_aff(transform, data.shape[:3])
    return np.ascontiguousarray(new_data), new_affine


def oblique_affine(affine: Affine, shape: tuple[int, ...]) -> Affine:
    """``affine`` rotated in world space by ``OBLIQUE_DEGREES`` (about z, then about x) around
    the world position of the centre of a ``shape`` (X, Y, Z, ...) voxel grid."""
    z_deg, x_deg = np.deg2rad(OBLIQUE_DEGREES)
    cz, sz, cx, sx = np.cos(z_deg), np.sin(z_deg), np.cos(x_deg), np.sin(x_deg)
    rot_z = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    rot_x = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    rotation = rot_x @ rot_z  # first about z, then about x
    affine = np.asarray(affine, dtype=np.float64)
    centre = nib.affines.apply_affine(affine, (np.asarray(shape[:3], dtype=np.float64) - 1) / 2)
    move = np.eye(4)
    move[:3, :3] = rotation
    move[:3, 3] = centre - rotation @ centre
    return move @ affine


def reorient(data: np.ndarray, affine: Affine, orientation: str) -> tuple[np.ndarray, Affine]:
    """Voxel array ``(X, Y, Z, ...)`` and 4x4 affine in the geometry ``orientation``.

    * ``native``: unchanged.
    * ``lps`` / ``ras``: axes flipped and permuted so that ``nib.aff2axcodes`` of the result is
      ``('L', 'P', 'S')`` / ``('R', 'A', 'S')``; every voxel keeps its world position. The
      generator's own grid is already LPS, so ``lps`` leaves generated cases as they are.
    * ``oblique``: same voxels, affine rotated (see :func:`oblique_affine`); world positions
      change.
    * ``permuted``: voxel axes permuted by ``PERMUTATION`` (result shape
      ``(Z, X, Y, ...)`` for the default), world positions kept.

    Axes after the third (e.g. a modality axis) are left alone.
    """
    if orientation == "native":
        return data, np.array(affine, dtype=np.float64)
    if orientation in ("lps", "ras"):
        target = ornt.axcodes2ornt(tuple(orientation.upper()))
        transform = ornt.ornt_transform(ornt.io_orientation(affine), target)
        return _apply_ornt(data, affine, transform)
    if orientation == "oblique":
        return data, oblique_affine(affine, data.shape)
    if orientation == "permuted":
        # Row i: generated axis i becomes file axis PERMUTATION.index(i), no flip.
        transform = np.array([[PERMUTATION.index(i), 1] for i in range(3)], dtype=float)
        return _apply_ornt(data, affine, transform)
    raise ValueError(
        f"orientation: expected one of {[o for o in ORIENTATIONS if o != 'mixed']}, "
        f"got {orientation!r}"
    )


def case_volumes(
    spec: SyntheticSpec, index: int, orientation: str = "native", anisotropic: bool = False
) -> tuple[dict[str, np.ndarray], Affine]:
    """Case ``index`` of ``spec`` as arrays in the written geometry, and their shared affine.

    Returns ``{"t1", "t1ce", "t2", "flair"}`` int16 and ``"seg"`` uint8 arrays (generator labels
    {0, 1, 2, 4}), all of one shape: ``spec.shape`` (X, Y, Z) with ``Z`` -> ``ceil(Z / 2)`` when
    ``anisotropic`` (every second generated slice along axis 2, spacing doubled), then reordered
    by :func:`reorient` with this case's orientation (:func:`case_orientation`).
    """
    mode = case_orientation(orientation, index)
    case = synthetic.synthesize_case(spec, index)
    affine = np.array(case["seg"].affine, dtype=np.float64)
    volumes: dict[str, np.ndarray] = {}
    new_affine = affine
    for key, image in case.items():
        data = np.asarray(image.dataobj)
        step_affine = affine
        if anisotropic:
            data, step_affine = drop_alternate_slices(data, affine)
        volumes[key], new_affine = reorient(data, step_affine, mode)
    return volumes, new_affine


def relabel(labels: np.ndarray, layout: str) -> NDArray[np.uint8]:
    """Generator labels {0, 1, 2, 4} (any shape) -> the stored values of ``layout`` (uint8)."""
    lut = np.zeros(max(LABEL_MAPS[layout]) + 1, dtype=np.uint8)
    for source, target in LABEL_MAPS[layout].items():
        lut[source] = target
    return lut[labels.astype(np.intp)]


def _nifti4d(data: np.ndarray, affine: Affine) -> nib.Nifti1Image:
    """4-D ``(X, Y, Z, C)`` NIfTI-1 with the spatial ``affine``, qform/sform code 1, pixdim[4] 1."""
    image = synthetic._nifti(data, affine)
    zooms = image.header.get_zooms()[:3]
    image.header.set_zooms((*zooms, 1.0))
    return image


def _save(image: nib.Nifti1Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        nib.save(image, tmp)


# ---------------------------------------------------------------------------------------------
# Folder record, refusal and resume
# ---------------------------------------------------------------------------------------------
def _record(
    spec: SyntheticSpec, layout: str, orientation: str, anisotropic: bool, complete: bool
) -> dict[str, object]:
    return {
        "generator": "kdseg.data.layouts",
        "generator_version": GENERATOR_VERSION,
        "layout_version": LAYOUT_VERSION,
        "layout": layout,
        "orientation": orientation,
        "anisotropic": anisotropic,
        "spec": asdict(spec),
        "complete": complete,
    }


def _check_existing(out_dir: Path, spec: SyntheticSpec, wanted: Mapping[str, object]) -> None:
    """Raise :class:`SyntheticDatasetMismatchError` unless ``out_dir`` is empty (temporary files
    aside) or holds a :func:`write_layout` output of the same call (``wanted``: its record, whose
    ``spec`` entry is ``spec``; ``complete`` is not compared)."""
    path = out_dir / RECORD_NAME
    if not path.exists():
        if any(not entry.match(TEMP_GLOB) for entry in out_dir.iterdir()):
            raise SyntheticDatasetMismatchError(
                f"{out_dir} is not empty and has no {RECORD_NAME}, so it is not a synthetic "
                f"layout folder; refusing to write into it. Choose an empty or new folder."
            )
        return
    try:
        stored = json.loads(path.read_text())
        if not isinstance(stored, dict):
            raise TypeError("not a JSON object")
        stored_spec = SyntheticSpec(**stored["spec"])
    except (ValueError, KeyError, TypeError) as error:
        raise SyntheticDatasetMismatchError(
            f"{path}: unreadable synthetic layout record ({error}); remove the folder or choose "
            f"another output folder"
        ) from error
    differences = [
        f"{key}: {stored.get(key)!r} there, {value!r} requested"
        for key, value in wanted.items()
        if key not in ("spec", "complete") and stored.get(key) != value
    ]
    differences += [
        f"{f.name}: {getattr(stored_spec, f.name)!r} there, {getattr(spec, f.name)!r} requested"
        for f in fields(SyntheticSpec)
        if getattr(stored_spec, f.name) != getattr(spec, f.name)
    ]
    if differences:
        raise SyntheticDatasetMismatchError(
            f"{out_dir} holds a synthetic dataset written with other settings "
            f"({'; '.join(differences)}); refusing to mix or overwrite it. Delete the folder or "
            f"write to another one."
        )


def _readme(spec: SyntheticSpec, layout: str, orientation: str, anisotropic: bool) -> str:
    geometry = {
        "native": "as generated (LPS-like voxel axes, affine diag(-sx, -sy, sz) + origin)",
        "lps": "voxel axes L, P, S (nib.aff2axcodes), world positions as generated",
        "ras": "voxel axes R, A, S (nib.aff2axcodes), world positions as generated",
        "oblique": f"voxels as generated, affine rotated {OBLIQUE_DEGREES[0]:g} deg about z "
                   f"and {OBLIQUE_DEGREES[1]:g} deg about x around the volume centre",
        "permuted": f"voxel axes permuted {PERMUTATION} (file axis k = generated axis "
                    f"PERMUTATION[k]), world positions as generated",
        "mixed": f"case i gets {list(MIXED_CYCLE)}[i % {len(MIXED_CYCLE)}]",
    }[orientation]
    return (
        f"Synthetic BraTS-like brain tumour dataset (kdseg.data.layouts, generator "
        f"v{GENERATOR_VERSION}) in the '{layout}' layout.\n"
        f"\n"
        f"Files: {_LAYOUT_TEXT[layout]}\n"
        f"Labels: {_LABEL_TEXT[layout]}\n"
        f"Geometry: {geometry}"
        f"{'; every second axial slice kept (slice spacing doubled)' if anisotropic else ''}.\n"
        f"All files of a case share one shape and affine; gzipped NIfTI-1, qform/sform code 1.\n"
        f"Settings: {json.dumps(asdict(spec))}\n"
        f"Regenerate: python -m kdseg synthesize --out <dir> --layout {layout} "
        f"--orientation {orientation}{' --anisotropic' if anisotropic else ''} "
        f"--n-cases {spec.n_cases} --shape {' '.join(map(str, spec.shape))} --seed {spec.seed} "
        f"--difficulty {spec.difficulty:g} --no-enhancing-fraction "
        f"{spec.no_enhancing_fraction:g}\n"
    )


def _manifest_csv(out_dir: Path, layout: str, n_cases: int) -> str:
    """``manifest.csv`` text of the ``manifest`` / ``unpaired`` layouts (paths relative)."""
    columns = list(MANIFEST_NAMES.values()) if layout == "manifest" else list(UNPAIRED_MODALITIES)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", *columns, "label"])
    for index in range(n_cases):
        files = layout_case_files(out_dir, layout, index)
        cells = {
            (MANIFEST_NAMES[key] if layout == "manifest" else key): path.relative_to(out_dir)
            for key, path in files.items()
            if key != "seg"
        }
        row = [cells.get(column, "") for column in columns]
        writer.writerow([layout_case_id(layout, index), *map(str, row),
                         str(files["seg"].relative_to(out_dir))])
    return buffer.getvalue()


def _msd_dataset_json(out_dir: Path, n_cases: int) -> dict[str, object]:
    """``dataset.json`` of the ``msd`` layout, with the keys of the real Task01_BrainTumour."""
    training = []
    for index in range(n_cases):
        files = layout_case_files(out_dir, "msd", index)
        training.append({"image": f"./{files['image'].relative_to(out_dir).as_posix()}",
                         "label": f"./{files['seg'].relative_to(out_dir).as_posix()}"})
    return {
        "name": "BRATS",
        "description": "Gliomas segmentation tumour and oedema in on brain images "
                       "(kdseg synthetic stand-in)",
        "reference": "kdseg.data.synthetic (synthetic data, no patients)",
        "licence": "CC-BY-SA 4.0",
        "release": f"kdseg synthetic v{GENERATOR_VERSION}",
        "tensorImageSize": "4D",
        "modality": dict(MSD_MODALITY),
        "labels": dict(MSD_LABELS),
        "numTraining": n_cases,
        "numTest": 0,
        "training": training,
        "test": [],
    }


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
def write_layout(
    out_dir: Path,
    spec: SyntheticSpec,
    layout: str,
    orientation: str = "native",
    anisotropic: bool = False,
    progress: bool = True,
) -> list[str]:
    """Write every case of ``spec`` under ``out_dir`` in ``layout``; return the case ids.

    ``brats`` with ``native`` geometry is exactly :func:`synthesize_dataset` (byte-identical
    files, ``synthetic.json``). Otherwise cases are generated one at a time (see
    :func:`case_volumes` for the geometry), every file is written atomically, and
    ``out_dir/synthetic_layout.json`` records layout, geometry, spec and generator version
    (``"complete": false`` until the end). Resumable: a case whose files all exist is skipped;
    a folder that is neither empty nor an output of the same call raises
    :class:`SyntheticDatasetMismatchError`. ``README.txt``, and ``dataset.json`` (msd) or
    ``manifest.csv`` (manifest, unpaired), are written too.
    """
    _check_choice("layout", layout, LAYOUTS)
    _check_choice("orientation", orientation, ORIENTATIONS)
    out_dir = Path(out_dir)
    anisotropic = bool(anisotropic)
    if layout == "brats" and orientation == "native" and not anisotropic:
        return synthetic.synthesize_dataset(out_dir, spec, progress=progress)

    out_dir.mkdir(parents=True, exist_ok=True)
    record = _record(spec, layout, orientation, anisotropic, complete=False)
    _check_existing(out_dir, spec, record)
    remove_stale_temp_files(out_dir)
    record_path = out_dir / RECORD_NAME
    if not record_path.exists():
        # Before the first case, so an interrupted run still refuses other settings later.
        write_text_atomic(json.dumps(record, indent=2) + "\n", record_path)
    write_text_atomic(_readme(spec, layout, orientation, anisotropic), out_dir / README_NAME)
    for sub in _SUBFOLDERS.get(layout, ()):
        (out_dir / sub).mkdir(exist_ok=True)
        remove_stale_temp_files(out_dir / sub)  # left behind by a killed run

    ids = [layout_case_id(layout, i) for i in range(spec.n_cases)]
    for index in tqdm(range(spec.n_cases), desc=f"synthetic {layout} cases", disable=not progress):
        files = layout_case_files(out_dir, layout, index)
        if all(path.exists() for path in files.values()):
            continue
        if layout in ("brats", "brats2023"):
            (out_dir / ids[index]).mkdir(exist_ok=True)
            remove_stale_temp_files(out_dir / ids[index])
        volumes, affine = case_volumes(spec, index, orientation, anisotropic)
        for key, path in files.items():
            if key == "image":  # msd: one float32 (X, Y, Z, 4) image, MSD volume order
                stack = np.stack([volumes[m] for m in MSD_ORDER], axis=-1).astype(np.float32)
                _save(_nifti4d(stack, affine), path)
            elif key == "seg":
                _save(synthetic._nifti(relabel(volumes["seg"], layout), affine), path)
            else:
                _save(synthetic._nifti(volumes[key], affine), path)

    if layout == "msd":
        dataset = _msd_dataset_json(out_dir, spec.n_cases)
        write_text_atomic(json.dumps(dataset, indent=4) + "\n", out_dir / "dataset.json")
    elif layout in ("manifest", "unpaired"):
        write_text_atomic(_manifest_csv(out_dir, layout, spec.n_cases), out_dir / "manifest.csv")
    record["complete"] = True
    write_text_atomic(json.dumps(record, indent=2) + "\n", record_path)
    return ids
