"""Built-in synthetic BraTS-like dataset: brain MRI with a glioma-like lesion, in the BraTS layout.

Each case is generated from the MNI152 2009 tissue probability maps shipped inside the nilearn
wheel (offline), deformed per case, with one synthetic tumour (edema, enhancing rim, necrotic or
non-enhancing core) and four modalities whose contrasts carry complementary information.
Files are written as ``<out>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``.

Conventions used throughout this module:

* Arrays are indexed ``(x, y, z)`` in the *written* voxel order, which is LPS-like as in BraTS
  files produced by ITK: voxel axis 0 runs towards patient Left, axis 1 towards Posterior, axis 2
  towards Superior, i.e. the affine is ``diag(-sx, -sy, sz)`` plus a translation.
* World coordinates are nibabel's RAS+ millimetres, aligned with MNI space (the brain is centred
  near the world origin).
* Stacked arrays put the stacked dimension first: ``(channel, x, y, z)``.
* Case ``i`` depends only on ``(spec.seed, i)`` and the spec's other settings, never on
  ``n_cases``: all its randomness comes from ``np.random.default_rng([seed, i])``, drawn in a
  fixed order.

The generative process and the contrast table are documented in ``docs/synthetic-data.md``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from scipy.spatial.transform import Rotation
from scipy.special import expit
from tqdm import tqdm

from kdseg.data.labels import BRATS_LEGACY
from kdseg.fileio import TEMP_GLOB, atomic_path, remove_stale_temp_files, write_text_atomic

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
GENERATOR_VERSION = "1"
MANIFEST_NAME = "synthetic.json"

F32 = NDArray[np.float32]

# Stored label values, asked of the shared convention rather than hard-coded.
_LABEL = dict(zip(BRATS_LEGACY.class_names, BRATS_LEGACY.label_values, strict=True))
LABEL_CORE: int = _LABEL["NCR"]  # necrotic / non-enhancing core (1)
LABEL_EDEMA: int = _LABEL["ED"]  # peritumoural edema (2)
LABEL_ENHANCING: int = _LABEL["ET"]  # enhancing tumour (4)

# ---------------------------------------------------------------------------------------------
# Contrast table: mean intensity of each tissue class per modality, in arbitrary units where
# normal white matter is ~0.5-0.9. Chosen so that the modalities are complementary (see docs):
# FLAIR/T2 show edema, T2 also makes CSF bright (a confounder FLAIR suppresses), T1ce separates
# the enhancing rim from the dark necrotic core, and T1 carries only small tumour contrasts.
# ---------------------------------------------------------------------------------------------
TISSUE_CLASSES: tuple[str, ...] = ("csf", "gm", "wm")
TUMOUR_CLASSES: tuple[str, ...] = ("edema", "enhancing", "necrosis", "non_enhancing")
CONTRAST_TABLE: dict[str, tuple[float, float, float, float]] = {
    # columns in MODALITIES order: t1, t1ce, t2, flair
    "csf": (0.30, 0.28, 1.60, 0.20),
    "gm": (0.62, 0.60, 0.80, 0.75),
    "wm": (0.85, 0.82, 0.55, 0.58),
    "edema": (0.75, 0.72, 1.20, 1.30),
    "enhancing": (0.80, 1.70, 0.95, 1.05),
    "necrosis": (0.62, 0.30, 1.35, 0.90),
    "non_enhancing": (0.72, 0.62, 1.25, 1.10),
}
_CLASS_ROW = {name: row for row, name in enumerate(CONTRAST_TABLE)}

# Intensity scale of the written int16 images (normal WM ends up around 800-1000).
_INTENSITY_SCALE = 1000.0
_BRAIN_MARGIN_MM = 4.0  # margin around the template's brain bounding box in the field of view


@dataclass(frozen=True)
class DifficultyKnobs:
    """What ``SyntheticSpec.difficulty`` (``d`` in [0, 1]) controls; each knob is linear in ``d``.

    Attributes:
        noise_sigma: std of the Gaussian noise on each complex channel (Rician magnitude), in
            contrast-table units (normal WM ~0.55-0.85): ``0.01 + 0.05 d``.
        bias_strength: std of the log bias field per modality: ``0.03 + 0.12 d``.
        blur_voxels: Gaussian blur sigma in voxels: ``0.25 + 0.5 d``.
        tumour_contrast: fraction of each tumour class's contrast to WM kept: ``1 - 0.4 d``.
        tissue_contrast: fraction of CSF/GM contrast to WM kept: ``1 - 0.25 d``.
        lesion_scale: multiplier of the lesion radius: ``1 - 0.25 d``.
    """

    noise_sigma: float
    bias_strength: float
    blur_voxels: float
    tumour_contrast: float
    tissue_contrast: float
    lesion_scale: float

    @classmethod
    def at(cls, difficulty: float) -> DifficultyKnobs:
        d = float(difficulty)
        return cls(
            noise_sigma=0.01 + 0.05 * d,
            bias_strength=0.03 + 0.12 * d,
            blur_voxels=0.25 + 0.5 * d,
            tumour_contrast=1 - 0.4 * d,
            tissue_contrast=1 - 0.25 * d,
            lesion_scale=1 - 0.25 * d,
        )


@dataclass(frozen=True)
class SyntheticSpec:
    """Settings of one synthetic dataset (the ``dataset.synthetic`` config block).

    Attributes:
        n_cases: number of cases to generate (ids ``SYN_0000`` ...).
        shape: ``(x, y, z)`` voxels of the written grid; the head fills the grid, so the voxel
            spacing is the brain's field of view divided by ``shape`` (coarse for small grids).
        seed: dataset seed; case ``i`` depends only on ``(seed, i)``.
        difficulty: 0 (easy) .. 1 (hard); scales noise, bias field, blur and tumour/tissue
            contrast, and shrinks lesions.
        no_enhancing_fraction: expected fraction of LGG-like cases without enhancing tumour.
    """

    n_cases: int = 40
    shape: tuple[int, int, int] = (96, 112, 96)
    seed: int = 0
    difficulty: float = 0.5
    no_enhancing_fraction: float = 0.2

    def __post_init__(self) -> None:
        # Configs come from YAML/JSON where a shape is a list: normalise it so specs compare and
        # hash equal however they were built.
        shape = self.shape
        if not isinstance(shape, tuple | list) or len(shape) != 3 or not all(map(_is_int, shape)):
            raise ValueError(f"shape: expected three integers (x, y, z), got {shape!r}")
        object.__setattr__(self, "shape", tuple(int(s) for s in shape))
        if any(s < 16 for s in self.shape):
            raise ValueError(f"shape: every dimension must be >= 16, got {self.shape}")
        if not _is_int(self.n_cases) or self.n_cases < 1:
            raise ValueError(f"n_cases: must be an integer >= 1, got {self.n_cases!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed: must be an integer >= 0, got {self.seed!r}")
        for name in ("difficulty", "no_enhancing_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ValueError(f"{name}: must be a number in [0, 1], got {value!r}")
            object.__setattr__(self, name, float(value))


class SyntheticDatasetMismatchError(ValueError):
    """The output folder already holds a synthetic dataset generated with other settings."""


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def case_id(index: int) -> str:
    """Case identifier of case ``index``: ``SYN_0000``, ``SYN_0001``, ..."""
    if index < 0:
        raise ValueError(f"case index must be >= 0, got {index}")
    return f"SYN_{index:04d}"


# ---------------------------------------------------------------------------------------------
# Template and grid geometry (cached per process)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Template:
    """MNI152 2009 tissue maps at 1 mm, cropped to the brain bounding box (read-only arrays).

    Attributes:
        gm, wm, mask: ``(X, Y, Z)`` float32 in the template's RAS voxel order; ``gm + wm <= mask``.
        depth: ``(X, Y, Z)`` float32 distance in mm from each brain voxel to the outside.
        affine: 4x4 voxel -> world (RAS mm) of the cropped arrays.
        fov_lo, fov_hi: world (RAS mm) corners of the brain bounding box plus margin.
    """

    gm: F32
    wm: F32
    mask: F32
    depth: F32
    affine: NDArray[np.float64]
    fov_lo: NDArray[np.float64]
    fov_hi: NDArray[np.float64]


@lru_cache(maxsize=1)
def _load_template() -> _Template:
    """Load nilearn's MNI152 maps at 1 mm (0.2 s each; ``resolution=2`` resamples and is slower)."""
    from nilearn import datasets  # deferred: importing nilearn takes ~3 s

    mask_img = datasets.load_mni152_brain_mask(resolution=1)
    mask = np.asarray(mask_img.dataobj, dtype=np.float32) > 0.5
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).dataobj, dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
    affine = mask_img.affine.astype(np.float64)

    index = np.argwhere(mask)
    lo, hi = index.min(axis=0), index.max(axis=0) + 1
    crop = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    # GM/WM maps leak a little outside the brain mask; keep tissue only inside it so that
    # CSF = mask - GM - WM stays a probability.
    gm, wm, mask = gm[crop] * mask[crop], wm[crop] * mask[crop], mask[crop].astype(np.float32)
    crop_affine = affine.copy()
    crop_affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]

    corners = nib.affines.apply_affine(affine, np.array([lo - 0.5, hi - 0.5]))
    fov_lo = corners.min(axis=0) - _BRAIN_MARGIN_MM
    fov_hi = corners.max(axis=0) + _BRAIN_MARGIN_MM
    depth = ndimage.distance_transform_edt(mask > 0.5).astype(np.float32)
    arrays = [gm, wm, mask, depth]
    for array in arrays:
        array.setflags(write=False)  # cached and shared between cases
    return _Template(*arrays, affine=crop_affine, fov_lo=fov_lo, fov_hi=fov_hi)


@dataclass(frozen=True)
class _Grid:
    """Written voxel grid: ``shape`` (x, y, z), ``spacing`` mm, LPS-like ``affine`` (4x4)."""

    shape: tuple[int, int, int]
    spacing: NDArray[np.float64]
    affine: NDArray[np.float64]


@lru_cache(maxsize=8)
def _grid(shape: tuple[int, int, int]) -> _Grid:
    """Grid whose field of view is the template brain's bounding box, in BraTS/ITK orientation.

    Voxel centres sit half a voxel inside the field of view; axis 0 starts at the right (max x),
    axis 1 at the front (max y), axis 2 at the bottom (min z), which gives ``diag(-sx, -sy, sz)``.
    """
    template = _load_template()
    spacing = (template.fov_hi - template.fov_lo) / np.asarray(shape, dtype=np.float64)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [
        template.fov_hi[0] - spacing[0] / 2,
        template.fov_hi[1] - spacing[1] / 2,
        template.fov_lo[2] + spacing[2] / 2,
    ]
    return _Grid(shape=shape, spacing=spacing, affine=affine)


@lru_cache(maxsize=2)
def _antialiased_tissue(shape: tuple[int, int, int]) -> F32:
    """Template ``(gm, wm, mask)`` as ``(3, X, Y, Z)`` at 1 mm, low-passed for sampling ``shape``.

    Each case resamples the 1 mm maps onto the grid in a single ``map_coordinates`` call; for
    coarse grids the maps are first Gaussian-smoothed with sigma = (spacing - 1) / 2 mm, the
    anti-aliasing rule of ``skimage.transform.rescale``.
    """
    template = _load_template()
    sigma = np.maximum((_grid(shape).spacing - 1.0) / 2.0, 0.0)
    stack = np.stack([template.gm, template.wm, template.mask])
    smoothed = np.stack([ndimage.gaussian_filter(channel, sigma) for channel in stack])
    smoothed.setflags(write=False)
    return smoothed


# ---------------------------------------------------------------------------------------------
# Smooth random fields
# ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _upsampling_operator(n_in: int, n_out: int) -> F32:
    """``(n_out, n_in)`` matrix of 1-D cubic-spline upsampling (``scipy.ndimage.zoom``, order 3).

    Built by zooming the identity, so column ``j`` is the upsampled unit impulse at control
    point ``j``. 3-D cubic-spline zoom is separable, so applying one such matrix per axis equals
    ``ndimage.zoom`` exactly while costing ~10 ms instead of ~1 s per field on a 1 M-voxel grid.
    """
    eye = np.eye(n_in, dtype=np.float64)
    op = ndimage.zoom(eye, (n_out / n_in, 1.0), order=3, mode="mirror", grid_mode=True)
    return op.astype(np.float32)


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int, int], n_control: tuple[int, int, int], n: int
) -> F32:
    """``n`` smooth Gaussian random fields of shape ``(n, *shape)``, each with zero mean, unit std.

    Low-resolution white noise on ``n_control`` control points per axis, upsampled with a cubic
    spline; the correlation length is about ``shape / n_control`` voxels.
    """
    coeffs = rng.standard_normal((n, *n_control), dtype=np.float32)
    ops = [_upsampling_operator(c, s) for c, s in zip(n_control, shape, strict=True)]
    fields = np.einsum("fabc,ia,jb,kc->fijk", coeffs, *ops, optimize=True)
    fields -= fields.mean(axis=(1, 2, 3), keepdims=True)
    fields /= fields.std(axis=(1, 2, 3), keepdims=True) + np.float32(1e-6)
    return fields


def _n_control(grid: _Grid, wavelength_mm: float) -> tuple[int, int, int]:
    """Control points per axis for fields with a given physical correlation length."""
    fov = grid.spacing * np.asarray(grid.shape)
    # >= 3: with fewer points the mirrored cubic spline is no longer a smooth bump.
    n = np.maximum(np.round(fov / wavelength_mm), 3).astype(int)
    return (int(n[0]), int(n[1]), int(n[2]))


# ---------------------------------------------------------------------------------------------
# Per-case random draws
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Warp:
    """Per-case spatial transform output -> template (world mm).

    ``linear`` (3x3) = rotation (<= 8 deg) x anisotropic scale (+-6 %) about ``centre``;
    ``elastic_mm`` scales unit-std smooth displacement fields.
    """

    linear: NDArray[np.float64]
    centre: NDArray[np.float64]
    elastic_mm: float


@dataclass(frozen=True)
class _Tumour:
    """Per-case lesion shape. Radii in mm; ``rotation`` maps lesion axes to world axes."""

    semi_axes: NDArray[np.float64]  # (3,) core (enhancing + necrotic) ellipsoid semi-axes
    rotation: NDArray[np.float64]  # (3, 3)
    necrosis_fraction: float  # necrotic radius / core radius
    edema_fraction: float  # edema radius / core radius (> 1)
    enhancing: bool  # False: LGG-like, the whole core is non-enhancing (label 1)
    mass_effect: float  # peak strain of the radial push of surrounding tissue (< 1: invertible)


def _random_rotation(rng: np.random.Generator, max_degrees: float | None) -> NDArray[np.float64]:
    """Random 3x3 rotation: uniform over SO(3) if ``max_degrees`` is None, else a random axis
    and an angle uniform in [0, max_degrees]. Built from rng draws rather than
    ``Rotation.random`` whose ``rng`` keyword only exists in recent scipy."""
    if max_degrees is None:
        # A normalised 4-D Gaussian is a uniform unit quaternion, hence a Haar-uniform rotation.
        return Rotation.from_quat(rng.standard_normal(4)).as_matrix()
    axis = rng.standard_normal(3)
    angle = np.deg2rad(rng.uniform(0.0, max_degrees))
    return Rotation.from_rotvec(axis / np.linalg.norm(axis) * angle).as_matrix()


def _draw_warp(rng: np.random.Generator) -> _Warp:
    rotation = _random_rotation(rng, max_degrees=8.0)
    scale = rng.uniform(0.94, 1.06, size=3)
    template = _load_template()
    return _Warp(
        linear=rotation @ np.diag(scale),
        centre=(template.fov_lo + template.fov_hi) / 2,
        elastic_mm=float(rng.uniform(1.5, 3.5)),
    )


def _draw_tumour(rng: np.random.Generator, spec: SyntheticSpec, grid: _Grid) -> _Tumour:
    """Lesion sizes, bounded below in voxels so that every compartment survives coarse grids."""
    voxel = float(grid.spacing.max())
    base = rng.uniform(12.0, 22.0) * DifficultyKnobs.at(spec.difficulty).lesion_scale
    semi_axes = np.maximum(base * rng.uniform(0.8, 1.2, size=3), 3.0 * voxel)
    core = float(semi_axes.min())
    # Necrotic radius >= 1.2 voxels and an enhancing rim >= 1.5 voxels thick.
    necrosis = float(np.clip(rng.uniform(0.5, 0.75), 1.2 * voxel / core, 1 - 1.5 * voxel / core))
    edema = float(rng.uniform(1.4, 2.2) + 1.5 * voxel / core)
    enhancing = bool(rng.random() >= spec.no_enhancing_fraction)
    return _Tumour(
        semi_axes=semi_axes,
        rotation=_random_rotation(rng, max_degrees=None),
        necrosis_fraction=necrosis,
        edema_fraction=edema,
        enhancing=enhancing,
        mass_effect=float(rng.uniform(0.1, 0.35)),
    )


# ---------------------------------------------------------------------------------------------
# Geometry: deform the template, place the lesion
# ---------------------------------------------------------------------------------------------
def _voxel_to_world(grid: _Grid, voxels: NDArray[np.floating]) -> NDArray[np.float64]:
    """World RAS mm ``(3, N)`` of grid voxel indices ``(3, N)``, in the dtype of ``voxels``."""
    dtype = voxels.dtype
    return grid.affine[:3, :3].astype(dtype) @ voxels + grid.affine[:3, 3:4].astype(dtype)


def _template_voxels(
    world: NDArray[np.floating], warp: _Warp, displacement: NDArray[np.floating]
) -> F32:
    """Template voxel coordinates ``(3, N)`` float32 sampled by output world points ``(3, N)``.

    ``displacement`` ``(3, N)`` is the elastic displacement in mm at those points. Computed in
    float32 (1e-3 mm error) to halve memory traffic on million-voxel grids.
    """
    inverse = np.linalg.inv(_load_template().affine)
    # Fold "rotate/scale about the centre, then go to template voxels" into one affine map.
    linear = inverse[:3, :3] @ warp.linear
    shift = inverse[:3, :3] @ (warp.centre - warp.linear @ warp.centre) + inverse[:3, 3]
    f32 = np.float32
    source = linear.astype(f32) @ world.astype(f32) + shift.astype(f32)[:, None]
    source += inverse[:3, :3].astype(f32) @ displacement.astype(f32)
    return source


def _mass_effect(world: F32, centre: NDArray[np.float64], tumour: _Tumour) -> F32:
    """Radial displacement ``(3, N)`` mm that pushes tissue away from the lesion centre.

    An output point ``p`` samples the template at ``p - m(p)`` with
    ``m(p) = k (p - c) exp(-|p - c|^2 / (2 s^2))``: content near the centre is spread outwards.
    Its radial derivative is at most ``k < 1``, so the map stays invertible (no folding).
    """
    offset = world - centre[:, None].astype(np.float32)
    width = 1.5 * float(np.mean(tumour.semi_axes))
    falloff = np.exp(-np.sum(offset**2, axis=0) / np.float32(2 * width**2))
    return np.float32(tumour.mass_effect) * offset * falloff


def _choose_centre(
    rng: np.random.Generator, grid: _Grid, warp: _Warp, elastic: F32, tumour: _Tumour
) -> NDArray[np.float64]:
    """World position (3,) of the lesion centre: in supratentorial white matter, deep enough
    for the core.

    Candidates are random grid voxels mapped through the case's warp, so the choice sees the
    deformed anatomy at the cost of sampling a few thousand points instead of the whole grid.
    """
    template = _load_template()
    n = 4096
    voxels = np.stack([rng.integers(0, s, size=n) for s in grid.shape])
    world = _voxel_to_world(grid, voxels.astype(np.float64))
    source = _template_voxels(world, warp, elastic[:, voxels[0], voxels[1], voxels[2]])
    wm = ndimage.map_coordinates(template.wm, source, order=1, mode="constant", cval=0.0)
    depth = ndimage.map_coordinates(template.depth, source, order=1, mode="constant", cval=0.0)
    deep_enough = depth >= 0.9 * tumour.semi_axes.max() + grid.spacing.max()
    # Adult gliomas are mostly supratentorial; below MNI z = -10 mm lie the cerebellum, the
    # brainstem and the skull base.
    mni_z = template.affine[2, :3] @ source + template.affine[2, 3]
    weights = (wm * deep_enough * (mni_z > -10.0)).astype(np.float64)  # choice() wants p in f64
    if weights.sum() > 0:
        pick = rng.choice(n, p=weights / weights.sum())
    else:  # pathological warp or huge lesion: take the deepest white-matter-ish point
        pick = int(np.argmax(depth * (wm + 0.1)))
    return world[:, pick]


@dataclass(frozen=True)
class _Anatomy:
    """Deformed anatomy of one case, stored sparsely over the brain.

    Every output is exactly 0 outside the (skull-stripped) brain, so per-voxel work is done on
    the ``N`` brain voxels only (about half of the grid) and scattered back at the end.

    Attributes:
        brain: ``(X, Y, Z)`` bool skull-stripping mask.
        index: ``(N,)`` flat C-order indices of the brain voxels.
        tissue: ``(3, N)`` partial-volume fractions (csf, gm, wm), summing to 1.
    """

    brain: NDArray[np.bool_]
    index: NDArray[np.intp]
    tissue: F32

    def gather(self, volume: np.ndarray) -> np.ndarray:
        """``(..., X, Y, Z)`` -> ``(..., N)`` values at the brain voxels."""
        return volume.reshape(*volume.shape[:-3], -1)[..., self.index]

    def scatter(self, values: np.ndarray) -> np.ndarray:
        """``(..., N)`` -> ``(..., X, Y, Z)``, zero outside the brain, same dtype."""
        volume = np.zeros((*values.shape[:-1], self.brain.size), dtype=values.dtype)
        volume[..., self.index] = values
        return volume.reshape(*values.shape[:-1], *self.brain.shape)


def _deform_anatomy(shape: tuple[int, int, int], coords: F32) -> _Anatomy:
    """Sample the anti-aliased template at template voxel ``coords`` ``(3, X*Y*Z)`` (C order).

    The mask is sampled everywhere; GM and WM only inside the resulting brain.
    """
    gm_map, wm_map, mask_map = _antialiased_tissue(shape)

    def sample(volume: F32, points: F32) -> F32:
        return ndimage.map_coordinates(volume, points, order=1, mode="constant", cval=0.0)

    mask = sample(mask_map, coords)
    index = np.flatnonzero(mask >= 0.5)
    inside = coords[:, index]
    gm, wm, mask = sample(gm_map, inside), sample(wm_map, inside), mask[index]
    # Linear interpolation preserves gm + wm <= mask, so CSF = mask - gm - wm is a fraction.
    csf = np.clip(mask - gm - wm, 0.0, None)
    tissue = (np.stack([csf, gm, wm]) / mask).astype(np.float32)
    brain = np.zeros(shape, dtype=bool)
    brain.flat[index] = True
    return _Anatomy(brain=brain, index=index, tissue=tissue)


@dataclass(frozen=True)
class _Lesion:
    """Soft compartment memberships ``(N,)`` in [0, 1] over the brain voxels, and the labels.

    ``edema`` covers the whole lesion (restricted to brain tissue), ``core`` the enhancing rim
    plus necrosis, ``necrosis`` the innermost part (all zero for LGG-like cases); ``labels`` is
    ``(N,)`` uint8 in {0, 1, 2, 4} from thresholding them at 0.5.
    """

    edema: F32
    core: F32
    necrosis: F32
    labels: NDArray[np.uint8]


def _lesion(
    world: F32,
    centre: NDArray[np.float64],
    tumour: _Tumour,
    shape_noise: F32,
    tissue: F32,
    grid: _Grid,
) -> _Lesion:
    """Nested, noise-perturbed ellipsoids around ``centre``, evaluated at brain voxels.

    ``world`` is ``(3, N)`` mm; ``shape_noise`` is ``(2, N)`` unit-std smooth noise perturbing
    the core and the (more irregular) edema boundaries; ``tissue`` is ``(3, N)`` (csf, gm, wm).
    """
    offset = world - centre[:, None].astype(np.float32)
    local = tumour.rotation.T.astype(np.float32) @ offset
    rho = np.sqrt(np.sum((local / tumour.semi_axes.astype(np.float32)[:, None]) ** 2, axis=0))
    radius = float(np.exp(np.mean(np.log(tumour.semi_axes))))
    width = 0.3 * float(grid.spacing.min())  # ~1 voxel partial-volume transition

    def inside(level: float, noise: F32, amplitude: float) -> F32:
        # Approximate signed distance (mm, > 0 inside) to the perturbed surface rho = level.
        signed = radius * (level * (1 + amplitude * noise) - rho)
        return expit(signed / width).astype(np.float32)

    _, gm, wm = tissue
    # Vasogenic edema spreads through white matter, partly into cortex, never into CSF.
    edema = inside(tumour.edema_fraction, shape_noise[1], 0.3) * np.clip(wm + 0.3 * gm, 0, 1)
    core = inside(1.0, shape_noise[0], 0.15)
    if tumour.enhancing:
        necrosis = inside(tumour.necrosis_fraction, shape_noise[0], 0.15) * core
    else:
        necrosis = np.zeros_like(core)
    edema = np.maximum(edema, core)

    labels = np.zeros(rho.shape, dtype=np.uint8)
    labels[edema >= 0.5] = LABEL_EDEMA
    labels[core >= 0.5] = LABEL_ENHANCING if tumour.enhancing else LABEL_CORE
    labels[(necrosis >= 0.5) & (core >= 0.5)] = LABEL_CORE
    return _Lesion(edema=edema, core=core, necrosis=necrosis, labels=labels)


# ---------------------------------------------------------------------------------------------
# Intensities
# ---------------------------------------------------------------------------------------------
def class_means(difficulty: float) -> NDArray[np.float64]:
    """Contrast table as ``(n_classes, n_modalities)`` (rows in ``CONTRAST_TABLE`` order).

    Every class mean is pulled towards white matter by the ``difficulty`` knobs
    (:class:`DifficultyKnobs` ``tumour_contrast`` and ``tissue_contrast``).
    """
    knobs = DifficultyKnobs.at(difficulty)
    means = np.array(list(CONTRAST_TABLE.values()), dtype=np.float64)
    wm = means[_CLASS_ROW["wm"]]
    keep = np.array(
        [
            knobs.tissue_contrast if c in TISSUE_CLASSES else knobs.tumour_contrast
            for c in CONTRAST_TABLE
        ]
    )
    return wm + keep[:, None] * (means - wm)


def _compose(
    anatomy: _Anatomy, lesion: _Lesion, means: NDArray[np.float64], enhancing: bool
) -> F32:
    """Noise-free brain intensities ``(4, N)``: tissue partial-volume mix, then the tumour
    compartments blended over it from the outside in (edema, core, necrosis) by their soft
    memberships."""
    rows = [_CLASS_ROW[c] for c in TISSUE_CLASSES]
    image = means[rows].T.astype(np.float32) @ anatomy.tissue
    core_class = "enhancing" if enhancing else "non_enhancing"
    blends = ((lesion.edema, "edema"), (lesion.core, core_class), (lesion.necrosis, "necrosis"))
    for weight, name in blends:
        target = means[_CLASS_ROW[name]].astype(np.float32)[:, None]
        image += weight[None] * (target - image)
    return image


def _acquire(
    rng: np.random.Generator,
    clean: F32,
    anatomy: _Anatomy,
    bias: F32,
    texture: F32,
    knobs: DifficultyKnobs,
) -> NDArray[np.int16]:
    """Imaging chain: texture, blur, bias, Rician noise, gain, integer rounding.

    ``clean`` is ``(4, N)`` over the brain voxels; ``bias`` ``(4, X, Y, Z)`` and ``texture``
    ``(X, Y, Z)`` are unit-std smooth fields. Returns ``(4, X, Y, Z)`` int16 images
    (integer-valued, like BraTS), exactly 0 outside the brain.
    """
    image = clean * (1 + np.float32(0.04) * anatomy.gather(texture))  # tissue heterogeneity
    # The blur sees the zero background, darkening the brain edge as skull stripping does.
    volume = anatomy.scatter(image)
    for channel in volume:
        ndimage.gaussian_filter(channel, knobs.blur_voxels, output=channel)
    image = anatomy.gather(volume) * np.exp(np.float32(knobs.bias_strength) * anatomy.gather(bias))
    sigma = np.float32(knobs.noise_sigma)
    # Magnitude of a complex signal with Gaussian noise on both channels: Rician, as in MRI.
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    image = np.hypot(real, imaginary)
    gain = np.exp(rng.normal(0.0, 0.1) + rng.normal(0.0, 0.15, size=len(MODALITIES)))
    image *= (_INTENSITY_SCALE * gain).astype(np.float32)[:, None]
    return anatomy.scatter(np.clip(np.rint(image), 0, np.iinfo(np.int16).max).astype(np.int16))


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticArrays:
    """One generated case as arrays on the grid of :func:`grid_affine`, axes ``(x, y, z)``.

    Attributes:
        images: ``(4, X, Y, Z)`` int16, modalities in ``MODALITIES`` order, 0 outside the brain.
        labels: ``(X, Y, Z)`` uint8 in {0, 1, 2, 4} (BraTS 2017-2021 numbering).
        tissue: ``(3, X, Y, Z)`` float32 ground-truth partial-volume fractions of normal tissue
            (csf, gm, wm) before the lesion was drawn; they sum to 1 inside the brain.
    """

    images: NDArray[np.int16]
    labels: NDArray[np.uint8]
    tissue: F32


def synthesize_arrays(spec: SyntheticSpec, index: int) -> SyntheticArrays:
    """Pure core of :func:`synthesize_case`: case ``index`` of ``spec`` as arrays."""
    if not 0 <= index < spec.n_cases:
        raise ValueError(f"case index {index} is outside 0..{spec.n_cases - 1} (n_cases)")
    rng = np.random.default_rng([spec.seed, index])
    grid = _grid(spec.shape)
    warp = _draw_warp(rng)
    tumour = _draw_tumour(rng, spec, grid)
    # Correlation lengths: anatomy varies on ~4 cm, coil sensitivity (bias) on the head scale,
    # lesion outlines and tissue texture on ~1 cm.
    elastic = smooth_noise(rng, spec.shape, _n_control(grid, 40.0), 3) * np.float32(warp.elastic_mm)
    bias = smooth_noise(rng, spec.shape, _n_control(grid, 60.0), len(MODALITIES))
    fine = smooth_noise(rng, spec.shape, _n_control(grid, 12.0), 3)

    centre = _choose_centre(rng, grid, warp, elastic, tumour)
    voxels = np.indices(grid.shape, dtype=np.float32).reshape(3, -1)
    world = _voxel_to_world(grid, voxels)
    moved = world - _mass_effect(world, centre, tumour)
    anatomy = _deform_anatomy(grid.shape, _template_voxels(moved, warp, elastic.reshape(3, -1)))
    lesion = _lesion(
        world[:, anatomy.index], centre, tumour, anatomy.gather(fine[:2]), anatomy.tissue, grid
    )
    clean = _compose(anatomy, lesion, _jittered_means(rng, spec.difficulty), tumour.enhancing)
    knobs = DifficultyKnobs.at(spec.difficulty)
    images = _acquire(rng, clean, anatomy, bias, fine[2], knobs)
    return SyntheticArrays(
        images=images, labels=anatomy.scatter(lesion.labels), tissue=anatomy.scatter(anatomy.tissue)
    )


def _jittered_means(rng: np.random.Generator, difficulty: float) -> NDArray[np.float64]:
    """Class means with a per-case, per-class, per-modality +-4 % (1 sd) jitter (biology varies)."""
    means = class_means(difficulty)
    return means * np.exp(rng.normal(0.0, 0.04, size=means.shape))


def grid_affine(shape: tuple[int, int, int]) -> NDArray[np.float64]:
    """4x4 voxel -> RAS mm affine of the written grid, ``diag(-sx, -sy, sz)`` plus origin."""
    return _grid(tuple(shape)).affine.copy()


def _nifti(data: np.ndarray, affine: NDArray[np.float64]) -> nib.Nifti1Image:
    """NIfTI-1 image with qform and sform both set (code 1, scanner, as ITK writes), zooms in mm."""
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units(xyz="mm")
    image.header.set_data_dtype(data.dtype)
    image.header["descrip"] = f"kdseg synthetic v{GENERATOR_VERSION}".encode()
    return image


def synthesize_case(spec: SyntheticSpec, index: int) -> dict[str, nib.Nifti1Image]:
    """Generate case ``index`` of the dataset ``spec`` in memory.

    Returns one image per modality in ``MODALITIES`` (int16, shape ``spec.shape``) and ``"seg"``
    (uint8, values in {0, 1, 2, 4}); all share the same affine.
    """
    arrays = synthesize_arrays(spec, index)
    affine = grid_affine(spec.shape)
    case = {
        name: _nifti(image, affine) for name, image in zip(MODALITIES, arrays.images, strict=True)
    }
    case["seg"] = _nifti(arrays.labels, affine)
    return case


def case_paths(out_dir: Path, index: int) -> dict[str, Path]:
    """Paths ``<out>/<case>/<case>_<key>.nii.gz`` for the 4 modalities and ``"seg"``."""
    cid = case_id(index)
    return {key: out_dir / cid / f"{cid}_{key}.nii.gz" for key in (*MODALITIES, "seg")}


def _write_manifest(path: Path, spec: SyntheticSpec, complete: bool) -> None:
    """Write ``synthetic.json`` atomically: generator, its version, the spec, completeness."""
    manifest = {
        "generator": "kdseg.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "spec": asdict(spec),
        "complete": complete,
    }
    write_text_atomic(json.dumps(manifest, indent=2) + "\n", path)


def _check_existing(out_dir: Path, spec: SyntheticSpec) -> None:
    """Raise if ``out_dir`` holds a dataset from another spec or generator version, or other
    files without a manifest (e.g. a real dataset: never write cases into it)."""
    path = out_dir / MANIFEST_NAME
    if not path.exists():
        if any(not entry.match(TEMP_GLOB) for entry in out_dir.iterdir()):
            raise SyntheticDatasetMismatchError(
                f"{out_dir} is not empty and has no {MANIFEST_NAME}, so it is not a synthetic "
                f"dataset folder; refusing to write into it. Choose an empty or new folder."
            )
        return
    try:
        stored = json.loads(path.read_text())
        stored_spec = SyntheticSpec(**stored["spec"])
        version = stored["generator_version"]
    except (ValueError, KeyError, TypeError) as error:
        raise SyntheticDatasetMismatchError(
            f"{path}: unreadable synthetic dataset manifest ({error}); remove the folder "
            f"or choose another output folder"
        ) from error
    if stored_spec == spec and version == GENERATOR_VERSION:
        return
    differences = [
        f"{f.name}: {getattr(stored_spec, f.name)!r} there, {getattr(spec, f.name)!r} requested"
        for f in fields(SyntheticSpec)
        if getattr(stored_spec, f.name) != getattr(spec, f.name)
    ]
    if version != GENERATOR_VERSION:
        differences.append(f"generator_version: {version!r} there, {GENERATOR_VERSION!r} now")
    raise SyntheticDatasetMismatchError(
        f"{out_dir} holds a synthetic dataset generated with other settings "
        f"({'; '.join(differences)}); refusing to mix or overwrite it. Delete the folder or "
        f"write to another one."
    )


def synthesize_dataset(out_dir: Path, spec: SyntheticSpec, progress: bool = True) -> list[str]:
    """Write every case of ``spec`` under ``out_dir`` in the BraTS layout; return the case ids.

    Resumable: a case whose five files exist is skipped, and every file is written atomically
    (temporary name in the same folder, then ``os.replace``), so an interrupted run never leaves
    a truncated ``.nii.gz``. ``out_dir/synthetic.json`` records the spec and generator version
    (with ``"complete": false`` until the last case is written); a folder whose manifest holds
    another spec raises :class:`SyntheticDatasetMismatchError`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_existing(out_dir, spec)
    manifest_path = out_dir / MANIFEST_NAME
    if not manifest_path.exists():
        # Written before the first case so a later run with other settings is refused even if
        # this one is interrupted.
        _write_manifest(manifest_path, spec, complete=False)

    ids = [case_id(i) for i in range(spec.n_cases)]
    for index in tqdm(range(spec.n_cases), desc="synthetic cases", disable=not progress):
        paths = case_paths(out_dir, index)
        if all(p.exists() for p in paths.values()):
            continue
        folder = out_dir / ids[index]
        folder.mkdir(exist_ok=True)
        remove_stale_temp_files(folder)  # left behind by a killed run
        for key, image in synthesize_case(spec, index).items():
            with atomic_path(paths[key]) as tmp:
                nib.save(image, tmp)
    _write_manifest(manifest_path, spec, complete=True)
    return ids
