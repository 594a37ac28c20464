"""Case geometry: reorientation to RAS, cropping, resampling and their inverse.

:class:`CaseGeometry` records how a case's original file grid maps to the preprocessed arrays, so
:func:`restore_prediction` can put a prediction back into the original orientation, shape and
affine, and :func:`forward_labels` can bring any label map of the original grid into the
preprocessed grid (the report's overlays).

Array axis order: spatial arrays are ``(X, Y, Z)`` (nibabel voxel order); images are
channel-first ``(C, X, Y, Z)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)
from scipy import ndimage

from kdseg.data.io import DataError
from kdseg.data.labels import LabelConvention
from kdseg.data.resample import resample_labels

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
        resampled_shape: shape of the preprocessed arrays when the crop was resampled to a
            target spacing, else None (the arrays have :attr:`crop_shape`).
    """

    case_id: str
    original_shape: tuple[int, int, int]
    original_affine: list[list[float]]
    canonical_shape: tuple[int, int, int]
    bbox: Box
    spacing: tuple[float, float, float]
    resampled_shape: tuple[int, int, int] | None = None

    @property
    def crop_shape(self) -> tuple[int, ...]:
        """Shape ``(x, y, z)`` of the cropped canonical grid."""
        return tuple(stop - start for start, stop in self.bbox)

    @property
    def array_shape(self) -> tuple[int, ...]:
        """Shape ``(x, y, z)`` of the preprocessed arrays (and of predictions to restore)."""
        return self.resampled_shape or self.crop_shape

    @property
    def array_spacing(self) -> tuple[float, float, float]:
        """Voxel spacing in mm of the preprocessed arrays (the crop's extent / array shape)."""
        return (
            self.spacing[0] * self.crop_shape[0] / self.array_shape[0],
            self.spacing[1] * self.crop_shape[1] / self.array_shape[1],
            self.spacing[2] * self.crop_shape[2] / self.array_shape[2],
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (tuples become lists)."""
        return {
            "case_id": self.case_id,
            "original_shape": list(self.original_shape),
            "original_affine": [list(row) for row in self.original_affine],
            "canonical_shape": list(self.canonical_shape),
            "bbox": [list(axis) for axis in self.bbox],
            "spacing": list(self.spacing),
            "resampled_shape": list(self.resampled_shape) if self.resampled_shape else None,
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
                resampled_shape=_int3(d["resampled_shape"]) if d.get("resampled_shape") else None,
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


def union_box(a: Box, b: Box) -> Box:
    return tuple((min(sa, sb), max(ea, eb)) for (sa, ea), (sb, eb) in zip(a, b, strict=True))


def slices(box: Box) -> tuple[slice, ...]:
    """The half-open box as a tuple of slices."""
    return tuple(slice(start, stop) for start, stop in box)


def restore_prediction(
    classes: np.ndarray,
    geometry: CaseGeometry,
    convention: LabelConvention,
    label_interpolation: str = "nearest",
) -> nib.Nifti1Image:
    """Put a class-id prediction back into the original file grid as stored label values.

    ``classes``: integer ``(x, y, z)`` in the preprocessed grid (shape
    :attr:`CaseGeometry.array_shape`). A resampled case is first resampled back to the crop
    grid (``label_interpolation``: ``nearest`` or per-label ``linear``); voxels outside the crop
    box become background (0). Returns a ``Nifti1Image`` with the original shape and affine
    (qform and sform both set, code 1 = scanner, units mm) in the convention's label dtype.
    """
    where = f"{geometry.case_id}: prediction"
    if classes.shape != geometry.array_shape:
        raise DataError(
            f"{where} shape {classes.shape} differs from the preprocessed array shape "
            f"{geometry.array_shape}"
        )
    if classes.dtype.kind not in "iub":
        raise DataError(f"{where} must hold integer class ids, got dtype {classes.dtype}")
    if classes.size and (classes.min() < 0 or classes.max() >= convention.num_classes):
        raise DataError(
            f"{where} holds class ids outside 0..{convention.num_classes - 1} "
            f"(min {classes.min()}, max {classes.max()})"
        )
    if geometry.resampled_shape is not None:
        classes = resample_labels(classes, geometry.crop_shape, label_interpolation,
                                  convention.num_classes)
    canonical = np.zeros(geometry.canonical_shape, dtype=convention.label_dtype)
    canonical[slices(geometry.bbox)] = convention.to_labels(classes)
    affine = np.asarray(geometry.original_affine, dtype=np.float64)
    data = from_canonical(canonical, affine)
    if data.shape != geometry.original_shape:  # only a corrupt geometry record gets here
        raise DataError(
            f"{geometry.case_id}: geometry record inconsistent: restored shape {data.shape} "
            f"!= original shape {geometry.original_shape}"
        )
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(convention.label_dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_zooms(tuple(float(v) for v in voxel_sizes(affine)))
    return img


def forward_labels(labels: np.ndarray, geometry: CaseGeometry,
                   convention: LabelConvention, source: str = "labels") -> np.ndarray:
    """Stored label values in the original file grid ``(X, Y, Z)`` -> class ids (uint8) in the
    preprocessed grid (reorient, crop, nearest-neighbour resampling); the inverse of
    :func:`restore_prediction` up to resampling."""
    if labels.shape != geometry.original_shape:
        raise DataError(f"{source}: shape {labels.shape} differs from the case's original shape "
                        f"{geometry.original_shape}")
    canonical, _ = to_canonical(labels, np.asarray(geometry.original_affine))
    classes = convention.to_classes(canonical[slices(geometry.bbox)], source=source)
    if geometry.resampled_shape is not None:
        classes = resample_labels(classes, geometry.resampled_shape, "nearest",
                                  convention.num_classes)
    return classes
