"""Resampling of cropped cases to a target voxel spacing, and back (nnU-Net semantics).

Pure numpy/scipy; no I/O. Arrays follow the preprocessing conventions: images are
``(C, X, Y, Z)`` float32, masks and label maps ``(X, Y, Z)``.

Grid convention (``grid_mode``): a voxel is a cell, and the first and last cells of the input
and output grids share their *outer edges* (as in ``skimage.transform.resize``, which nnU-Net
uses), so output voxel centre ``x_out`` samples the input at::

    x_in = (x_out + 0.5) * n_in / n_out - 0.5

per axis, and values beyond the input edge repeat the edge voxel (``mode="nearest"``). This is
what ``scipy.ndimage.zoom(..., grid_mode=True)`` computes: given ``zoom=n_out / n_in`` it sizes
the output as ``round(n_in * n_out / n_in)``, which is exactly ``n_out`` for every pair of
integers (the product is within rounding error of an integer, far from a .5 tie), and it then
rederives the scale ``n_in / n_out`` from the two shapes, not from the float ratio. Outputs are
preallocated and passed to scipy, which refuses an output of any other shape, so an off-by-one
could never pass silently.

No anti-aliasing filter is applied before downsampling (nnU-Net's ``anti_aliasing=False``).
Cubic B-spline interpolation (order 3) can overshoot the input range near sharp edges; as in
nnU-Net the result is not clipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import ndimage

Shape3 = tuple[int, int, int]

# Edge padding before the B-spline prefilter, as scipy does internally for mode="nearest"
# (scipy.ndimage._interpolation._prepad_for_spline_filter): the 'nearest' boundary of the
# recursive prefilter is only approximate, so the edge is extended far enough that the
# approximation no longer reaches the voxels that are sampled.
_SPLINE_PAD = 12


# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------


def target_shape(
    shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]
) -> Shape3:
    """Grid size ``(x, y, z)`` that covers the same field of view at ``target_spacing``.

    Per axis ``max(1, round(s / t * n))`` for ``n`` voxels of spacing ``s`` mm resampled to
    spacing ``t`` mm (nnU-Net's ``compute_new_shape``; Python's ``round``, i.e. ties to even,
    like ``np.round``).

    Raises:
        ValueError: a sequence is not of length 3, a size is not a positive integer, or a
            spacing is not a finite positive number.
    """
    n = _shape3(shape, "shape")
    s = _spacing3(spacing, "spacing")
    t = _spacing3(target_spacing, "target_spacing")
    return (
        max(1, round(s[0] / t[0] * n[0])),
        max(1, round(s[1] / t[1] * n[1])),
        max(1, round(s[2] / t[2] * n[2])),
    )


def _shape3(shape: Sequence[int], name: str) -> Shape3:
    values = tuple(shape)
    if len(values) != 3:
        raise ValueError(f"{name}: expected 3 sizes (x, y, z), got {values!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ValueError(f"{name}: sizes must be integers >= 1, got {values!r}")
    return (int(values[0]), int(values[1]), int(values[2]))


def _spacing3(spacing: Sequence[float], name: str) -> tuple[float, float, float]:
    values = tuple(spacing)
    if len(values) != 3:
        raise ValueError(f"{name}: expected 3 spacings in mm (x, y, z), got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
            raise ValueError(f"{name}: spacings must be numbers, got {values!r}")
        if not math.isfinite(float(v)) or float(v) <= 0:
            raise ValueError(f"{name}: spacings must be finite and > 0 mm, got {values!r}")
        out.append(float(v))
    return (out[0], out[1], out[2])


def _zoom(in_shape: Sequence[int], out_shape: Shape3) -> list[float]:
    """The ``zoom`` argument of ``ndimage.zoom``: ``n_out / n_in`` per axis (see module doc)."""
    return [o / i for o, i in zip(out_shape, in_shape, strict=True)]


def _check_volume(array: np.ndarray, name: str) -> None:
    if array.ndim != 3:
        raise ValueError(f"{name}: expected an (X, Y, Z) array, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name}: empty array of shape {array.shape}")


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def resample_image(image: np.ndarray, out_shape: Sequence[int], order: int) -> np.ndarray:
    """Resample every channel of a ``(C, X, Y, Z)`` image onto an ``out_shape`` grid.

    ``order`` 1 is trilinear, 3 cubic B-spline (with the usual prefilter, so the spline
    interpolates the voxel values), both voxel-edge aligned with edge values repeated outside
    (see the module docstring). Returns float32 ``(C, *out_shape)``; a float32 copy of
    ``image`` when ``out_shape`` is its spatial shape.

    Memory: the output is allocated once and filled channel by channel. Order 1 needs no
    further array. For order 3, ``ndimage.zoom`` would hold an edge-padded copy of the channel
    plus its float64 spline coefficients (about 4.7 float32 channels); here the coefficients
    are computed in place, in float32, in the padded copy (about 1.6 channels, the pad being
    12 voxels per side) and sampled with ``affine_transform`` at the same coordinates. The
    result matches ``ndimage.zoom(order=3, mode="nearest", grid_mode=True)`` to float32
    rounding of the coefficients (relative error ~1e-7).

    Raises:
        ValueError: ``image`` is not 4-D, not of a real (non-complex) numeric dtype, or empty;
            ``out_shape`` is not three integers >= 1; ``order`` is not 1 or 3.
    """
    if image.ndim != 4:
        raise ValueError(f"image: expected a (C, X, Y, Z) array, got shape {image.shape}")
    if image.dtype.kind not in "fiu" or image.size == 0:
        raise ValueError(f"image: expected a non-empty real array, got {image.dtype} {image.shape}")
    shape = _shape3(out_shape, "out_shape")
    if isinstance(order, bool) or order not in (1, 3):
        raise ValueError(f"order: must be 1 (linear) or 3 (cubic B-spline), got {order!r}")
    if shape == image.shape[1:]:
        return image.astype(np.float32, copy=True)

    out = np.empty((image.shape[0], *shape), dtype=np.float32)
    zoom = _zoom(image.shape[1:], shape)
    for channel, values in enumerate(image):
        if order == 1:
            ndimage.zoom(
                values,
                zoom,
                output=out[channel],
                order=1,
                mode="nearest",
                grid_mode=True,
                prefilter=False,
            )
        else:
            _cubic_into(values, out[channel])
    return out


def _cubic_into(values: np.ndarray, out: np.ndarray) -> None:
    """Cubic B-spline resampling of one ``(X, Y, Z)`` channel into the preallocated ``out``.

    Reproduces ``ndimage.zoom(values, order=3, mode="nearest", grid_mode=True)``: edge-pad by
    ``_SPLINE_PAD``, prefilter with the 'nearest' boundary (here in place and in float32), then
    sample padded voxel ``x_in + _SPLINE_PAD`` where ``x_in = (x_out + 0.5) * n_in / n_out - 0.5``.
    """
    coeffs = np.pad(values.astype(np.float32, copy=False), _SPLINE_PAD, mode="edge")
    ndimage.spline_filter(coeffs, order=3, output=coeffs, mode="nearest")
    scale = np.array([i / o for i, o in zip(values.shape, out.shape, strict=True)])
    # affine_transform with a diagonal matrix: out[o] = coeffs[scale * o + offset].
    offset = 0.5 * scale - 0.5 + _SPLINE_PAD
    ndimage.affine_transform(
        coeffs, scale, offset=offset, output=out, order=3, mode="nearest", prefilter=False
    )


# ---------------------------------------------------------------------------------------------
# Masks and label maps
# ---------------------------------------------------------------------------------------------


def resample_mask(mask: np.ndarray, out_shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling of a boolean ``(X, Y, Z)`` mask; returns bool ``out_shape``.

    Raises:
        ValueError: ``mask`` is not a non-empty 3-D bool array, or ``out_shape`` is invalid.
    """
    _check_volume(mask, "mask")
    if mask.dtype != np.bool_:
        raise ValueError(f"mask: expected a bool array, got {mask.dtype}")
    shape = _shape3(out_shape, "out_shape")
    if shape == mask.shape:
        return mask.copy()
    out = np.empty(shape, dtype=np.bool_)
    ndimage.zoom(
        mask, _zoom(mask.shape, shape), output=out, order=0, mode="nearest", grid_mode=True
    )
    return out


def resample_labels(
    labels: np.ndarray,
    out_shape: Sequence[int],
    method: Literal["nearest", "linear"],
    num_classes: int,
) -> np.ndarray:
    """Resample an ``(X, Y, Z)`` map of class ids ``0..num_classes-1``; returns uint8 ``out_shape``.

    ``method``:

    * ``"nearest"``: nearest neighbour (order 0).
    * ``"linear"``: per-label linear interpolation, as nnU-Net resamples segmentations: the
      one-hot mask of each class is interpolated trilinearly (float32) and every output voxel
      takes the class with the largest interpolated value. Classes are visited in increasing
      id with a running maximum and a strict ``>``, so only one class map is held at a time and
      ties go to the lower class id. (nnU-Net instead writes each class where its map is
      >= 0.5, later classes overwriting; the argmax differs only where no class reaches 0.5,
      where it leaves background and this picks the most likely class.)

    Raises:
        ValueError: ``labels`` is not a non-empty 3-D integer array, holds ids outside
            ``0..num_classes-1``; ``num_classes`` is not in 1..256; ``out_shape`` or ``method``
            is invalid.
    """
    _check_volume(labels, "labels")
    if labels.dtype.kind not in "iub":
        raise ValueError(f"labels: expected integer class ids, got dtype {labels.dtype}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise ValueError(f"num_classes: must be an integer, got {num_classes!r}")
    if not 1 <= num_classes <= 256:
        raise ValueError(f"num_classes: must be in 1..256 (uint8 output), got {num_classes}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(f"labels: class ids must lie in 0..{num_classes - 1}, found {low}..{high}")
    if method not in ("nearest", "linear"):
        raise ValueError(f"method: must be 'nearest' or 'linear', got {method!r}")
    shape = _shape3(out_shape, "out_shape")
    classes = labels.astype(np.uint8, copy=False)
    if shape == labels.shape:
        return classes.copy()
    zoom = _zoom(labels.shape, shape)
    out = np.zeros(shape, dtype=np.uint8)
    if method == "nearest":
        ndimage.zoom(classes, zoom, output=out, order=0, mode="nearest", grid_mode=True)
        return out

    present = np.flatnonzero(np.bincount(classes.ravel(), minlength=num_classes))
    if len(present) == 1:  # a single class: every output voxel is that class
        out.fill(present[0])
        return out
    # An absent class interpolates to 0 everywhere and the present ones sum to 1 (partition of
    # unity), so skipping absent classes changes nothing.
    best = np.empty(shape, dtype=np.float32)
    current = np.empty(shape, dtype=np.float32)
    onehot = np.empty(labels.shape, dtype=np.float32)
    better = np.empty(shape, dtype=np.bool_)
    for i, c in enumerate(present):
        np.equal(classes, c, out=onehot, casting="unsafe")
        target = best if i == 0 else current
        ndimage.zoom(
            onehot, zoom, output=target, order=1, mode="nearest", grid_mode=True, prefilter=False
        )
        if i == 0:
            out.fill(c)
            continue
        np.greater(current, best, out=better)
        np.copyto(best, current, where=better)
        out[better] = c
    return out
