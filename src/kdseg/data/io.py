"""Read and check the NIfTI files of one case (whatever layout an adapter found them in).

:class:`CaseFiles` (what :mod:`kdseg.data.adapters` finds) -> :class:`LoadedCase` (arrays in
memory). Every problem with the input is a :class:`DataProblem` naming the file;
:func:`read_case` collects them instead of stopping at the first, so a validation pass can report
everything wrong with a dataset in one go, and :class:`DataError` carries them as one message
whose first line starts with the offending path (or the dataset folder, above a table).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from kdseg.data.labels import LabelConvention

LABEL_SUFFIX = "seg"
NIFTI_EXTENSIONS = (".nii.gz", ".nii")  # first one is the one named in "missing file" messages
AFFINE_ATOL_MM = 1e-3

# What nibabel / gzip raise on unreadable files: ImageFileError (not gzip, empty, unknown format),
# EOFError (truncated stream), zlib.error / OSError (corrupt stream, BadGzipFile, CRC),
# HeaderDataError / ValueError (inconsistent header fields).
_READ_ERRORS = (ImageFileError, EOFError, zlib.error, OSError, HeaderDataError, ValueError)


@dataclass(frozen=True)
class DataProblem:
    """One problem found in the input data."""

    case_id: str
    path: Path
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class DataError(ValueError):
    """Any problem with input or preprocessed data; the message starts with the offending path.

    ``problems`` holds the individual problems behind the message (empty for errors that are not
    about one case, e.g. a missing dataset folder).
    """

    def __init__(self, message: str, problems: Sequence[DataProblem] = ()) -> None:
        super().__init__(message)
        self.problems: tuple[DataProblem, ...] = tuple(problems)

    @classmethod
    def from_problems(cls, problems: Sequence[DataProblem], where: Path) -> DataError:
        """One error for all ``problems``: the problem itself if there is one, else a table.

        ``where`` (dataset root or case folder) starts the message of the multi-problem form and
        file paths in the table are shown relative to it.
        """
        if not problems:
            raise ValueError("from_problems needs at least one problem")
        if len(problems) == 1:
            return cls(str(problems[0]), problems)
        n_cases = len({p.case_id for p in problems})
        header = f"{where}: {len(problems)} data problems in {n_cases} case(s):"
        return cls(f"{header}\n{format_problems(problems, where)}", problems)


def format_problems(problems: Sequence[DataProblem], where: Path) -> str:
    """Left-aligned ``case | file | problem`` table, file paths relative to ``where``."""

    def shown(path: Path) -> str:
        return str(path.relative_to(where)) if path.is_relative_to(where) else str(path)

    rows = [("case", "file", "problem")] + [(p.case_id, shown(p.path), p.problem) for p in problems]
    # Hand-formatted: pandas' to_string right-aligns text and pulls pandas into the I/O module.
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(
        f"  {case.ljust(widths[0])}  {file.ljust(widths[1])}  {problem}"
        for case, file, problem in rows
    )


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case, as a dataset adapter (:mod:`kdseg.data.adapters`) found them.

    Attributes:
        images: modality name -> file. In an unpaired dataset a case lists only the modalities
            it has; several modalities may share one 4-D file (MSD).
        label: the label file, or None for unlabelled cases.
        volumes: modality -> index along the 4th axis of its file, for modalities stored in a
            4-D file (MSD ``imagesTr``); modalities not listed are 3-D files.
    """

    case_id: str
    images: dict[str, Path]
    label: Path | None
    volumes: dict[str, int] = field(default_factory=dict)


@dataclass
class LoadedCase:
    """One case in memory.

    Attributes:
        image: float32 ``(C, X, Y, Z)`` in the files' own voxel order; channel ``c`` is
            ``modalities[c]``. Channels of modalities the case lacks (unpaired data) are 0.
        label: stored label values ``(X, Y, Z)`` (uint8, uint16 for wide label maps), or None
            for unlabelled cases.
        affine: ``(4, 4)`` voxel-to-world (mm) affine shared by all files of the case.
        available: the modalities the case has files for (all of ``modalities`` when paired).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    modalities: tuple[str, ...]
    available: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.available:
            self.available = self.modalities


def check_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
    """Validate a modality list (non-empty, unique, not the label suffix) and return it as tuple."""
    mods = tuple(modalities)
    if not mods:
        raise ValueError("modalities: at least one modality is needed")
    if len(set(mods)) != len(mods):
        raise ValueError(f"modalities: duplicate names in {list(mods)}")
    if LABEL_SUFFIX in mods:
        raise ValueError(f"modalities: {LABEL_SUFFIX!r} names the label file, not a modality")
    return mods


def _file_error(case_id: str, path: Path, problem: str) -> DataError:
    return DataError.from_problems([DataProblem(case_id, path, problem)], path)


def _load_nifti(case_id: str, path: Path) -> nib.Nifti1Image:
    try:
        return nib.load(path)
    except _READ_ERRORS as err:
        raise _file_error(case_id, path, f"cannot read NIfTI file ({err})") from err


def _voxels(case_id: str, path: Path, img: nib.Nifti1Image, as_image: bool) -> np.ndarray:
    try:
        return img.get_fdata(dtype=np.float32) if as_image else np.asanyarray(img.dataobj)
    except _READ_ERRORS as err:
        raise _file_error(case_id, path, f"cannot read NIfTI voxel data ({err})") from err


def _read_volume(case_id: str, path: Path, as_image: bool) -> tuple[np.ndarray, np.ndarray]:
    """Read one 3-D NIfTI file -> (voxels ``(X, Y, Z)``, affine ``(4, 4)``).

    Images come back as float32 (scaling applied); labels in their stored dtype, so integer
    label files need no fractional-value check. A trailing singleton 4th axis ``(X, Y, Z, 1)``
    (written by some tools) is accepted as 3-D. DataError if unreadable or not 3-D.
    """
    img = _load_nifti(case_id, path)
    shape = tuple(img.shape)
    if len(shape) == 4 and shape[3] == 1:
        img = img.slicer[..., 0]
    elif len(shape) != 3:
        raise _file_error(
            case_id, path, f"expected a 3-D image, got {len(shape)}-D data of shape {shape}"
        )
    return _voxels(case_id, path, img, as_image), np.asarray(img.affine, dtype=np.float64)


def _read_4d(case_id: str, path: Path, needed: int) -> tuple[np.ndarray, np.ndarray]:
    """Read a 4-D multi-modality file (MSD) -> (float32 ``(X, Y, Z, V)``, affine); DataError if
    it is not 4-D or has fewer than ``needed`` volumes."""
    img = _load_nifti(case_id, path)
    shape = tuple(img.shape)
    if len(shape) != 4:
        raise _file_error(case_id, path, f"expected a 4-D image (X, Y, Z, modality) with "
                                         f"{needed} volumes, got {len(shape)}-D data of shape "
                                         f"{shape}")
    if shape[3] < needed:
        raise _file_error(case_id, path, f"4-D image has {shape[3]} volumes, the dataset "
                                         f"description needs {needed}")
    return _voxels(case_id, path, img, True), np.asarray(img.affine, dtype=np.float64)


def _geometry_problems(
    data: np.ndarray, affine: np.ndarray, ref_path: Path, ref_shape: tuple, ref_affine: np.ndarray,
    path: Path | None = None,
) -> list[str]:
    """Shape / affine disagreement with the reference (first) modality file; ``path`` (the
    checked file) only to name the reference unambiguously when both share a file name (MSD's
    ``imagesTr/X.nii.gz`` and ``labelsTr/X.nii.gz``)."""
    ref_name = ref_path.name
    if path is not None and path.name == ref_name:
        ref_name = f"{ref_path.parent.name}/{ref_name}"
    if data.shape != ref_shape:
        return [f"shape {data.shape} differs from {ref_name} shape {ref_shape}"]
    diff = float(np.max(np.abs(affine - ref_affine)))
    if diff > AFFINE_ATOL_MM:
        return [
            f"affine differs from {ref_name} affine by up to {diff:.4g} mm "
            f"(tolerance {AFFINE_ATOL_MM} mm)"
        ]
    return []


def _nonfinite_problem(data: np.ndarray) -> list[str]:
    if data.dtype.kind != "f":
        return []
    n_nan = int(np.count_nonzero(np.isnan(data)))
    n_inf = int(np.count_nonzero(np.isinf(data)))
    if n_nan or n_inf:
        return [f"{n_nan} NaN and {n_inf} Inf voxels (non-finite intensities)"]
    return []


def _label_value_problems(data: np.ndarray, path: Path, convention: LabelConvention) -> list[str]:
    """Fractional or out-of-convention label values; call only on finite data."""
    if data.dtype.kind == "f":
        fractional = data != np.round(data)
        n_fractional = int(np.count_nonzero(fractional))
        if n_fractional:
            example = float(data[fractional].flat[0])
            return [
                f"label file has non-integer (fractional) values in {n_fractional} voxels, "
                f"e.g. {example:g}"
            ]
    try:
        convention.check_values(data.astype(np.int64), source=str(path))
    except ValueError as err:
        # check_values prefixes its message with the source; our problems carry the path apart.
        return [str(err).removeprefix(f"{path}: ")]
    return []


def read_case(
    files: CaseFiles,
    modalities: Sequence[str],
    convention: LabelConvention,
    allow_missing: bool = False,
) -> tuple[LoadedCase | None, list[DataProblem]]:
    """Like :func:`load_case`, but returns every problem found instead of raising at the first.

    Returns ``(case, [])`` when the case is valid, ``(None, problems)`` otherwise. Reads one
    file at a time into a preallocated ``(C, X, Y, Z)`` array to keep one case in memory (a 4-D
    file is read once for all the modalities it holds). With ``allow_missing`` (unpaired data)
    modalities without a file are left as zero channels; at least one must be present.
    """
    mods = check_modalities(modalities)
    missing = [m for m in mods if m not in files.images]
    if len(missing) == len(mods) or (missing and not allow_missing):
        raise ValueError(f"case {files.case_id}: no file given for modalities {missing}")
    present = [m for m in mods if m in files.images]
    problems: list[DataProblem] = []
    image: np.ndarray | None = None
    ref: tuple[Path, tuple, np.ndarray] | None = None  # first readable modality file
    four_d: dict[Path, tuple[np.ndarray, np.ndarray] | None] = {}
    for modality in present:
        channel = mods.index(modality)
        path = files.images[modality]
        try:
            if modality in files.volumes:
                if path not in four_d:  # read a 4-D file once for all its modalities
                    needed = 1 + max(v for m, v in files.volumes.items() if files.images[m] == path)
                    four_d[path] = None
                    four_d[path] = _read_4d(files.case_id, path, needed)
                if four_d[path] is None:
                    continue  # its problem is already recorded
                volumes, affine = four_d[path]  # type: ignore[misc]
                data = volumes[..., files.volumes[modality]]
            else:
                data, affine = _read_volume(files.case_id, path, as_image=True)
        except DataError as err:
            problems.extend(err.problems)
            continue
        if ref is None:
            ref = (path, data.shape, affine)
            image = np.zeros((len(mods), *data.shape), dtype=np.float32)
        found = _geometry_problems(data, affine, *ref) or _nonfinite_problem(data)
        if not found and not np.any(data):
            found = ["every voxel is zero (an empty image)"]
        if path in four_d and found:  # several modalities share the file: say which one
            found = [f"volume {files.volumes[modality]} ({modality}): {text}" for text in found]
        problems.extend(DataProblem(files.case_id, path, text) for text in found)
        if not found and image is not None:
            image[channel] = data
    four_d.clear()
    label = None
    if files.label is not None:
        label, label_problems = _read_label(files.case_id, files.label, ref, convention)
        problems.extend(label_problems)
    if problems or image is None or ref is None:
        return None, problems
    return LoadedCase(files.case_id, image, label, ref[2], mods, tuple(present)), []


def _read_label(
    case_id: str,
    path: Path,
    ref: tuple[Path, tuple, np.ndarray] | None,
    convention: LabelConvention,
) -> tuple[np.ndarray | None, list[DataProblem]]:
    """Read and check one label file -> (``(X, Y, Z)`` in the convention's dtype or None,
    problems)."""
    try:
        data, affine = _read_volume(case_id, path, as_image=False)
    except DataError as err:
        return None, list(err.problems)
    found = _geometry_problems(data, affine, *ref, path=path) if ref is not None else []
    found = found or _nonfinite_problem(data) or _label_value_problems(data, path, convention)
    if found:
        return None, [DataProblem(case_id, path, text) for text in found]
    return data.astype(convention.label_dtype), []


def load_case(
    files: CaseFiles,
    modalities: Sequence[str],
    convention: LabelConvention,
    allow_missing: bool = False,
) -> LoadedCase:
    """Read one case and check it; DataError naming the file for any problem.

    Checks: readable NIfTI, 3-D (4-D for modalities in ``files.volumes``), same shape and
    affine (atol 1e-3 mm) as the first modality, finite intensities, no all-zero image, integer
    label values allowed by ``convention``.

    Returns a :class:`LoadedCase` with ``image`` float32 ``(C, X, Y, Z)`` (channel order =
    ``modalities``) and ``label`` ``(X, Y, Z)`` or None.
    """
    case, problems = read_case(files, modalities, convention, allow_missing)
    if problems:
        folder = next(iter(files.images.values())).parent
        raise DataError.from_problems(problems, folder)
    assert case is not None  # read_case returns a case exactly when there are no problems
    return case
