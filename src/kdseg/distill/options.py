"""Typed, validated option blocks for distillation methods (no torch import: used at config time).

A method's block in ``config.yaml`` (``methods.<name>``) is parsed into its options dataclass.
Unknown keys, wrong types and out-of-range values fail here, naming the config key, before any
job starts: there is no ``**kwargs`` sink where a typo could hide.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, get_type_hints


class OptionsError(ValueError):
    """A method's config block is invalid; the message names the key."""


@dataclass(frozen=True)
class MethodOptions:
    """Base of every method's options. Subclasses add typed fields with defaults."""

    teacher: ClassVar[str] = "none"
    """Where the full-modality teacher comes from:

    * ``"none"``: no teacher (the student learns from the labels only);
    * ``"frozen"``: a separately trained teacher run (two-stage KD); the workflow makes the
      student wait for it and the trainer runs it without autograd;
    * ``"joint"``: a full-modality teacher path trained in the same job and the same iterations
      as the student (single-stage methods); the workflow does not wait for a teacher run.
    """

    @property
    def needs_teacher(self) -> bool:
        """True when the method distills from a separately trained, frozen teacher run."""
        return self.teacher == "frozen"

    def validate(self, where: str) -> None:
        """Check value ranges; raise ``OptionsError`` naming ``where.<field>``."""

    def _require(self, where: str, names: tuple[str, ...], minimum: float,
                 strict: bool = False) -> None:
        """Each field in ``names`` must be ``> minimum`` (``strict``) or ``>= minimum``."""
        for name in names:
            value = getattr(self, name)
            if value < minimum or (strict and value == minimum):
                raise OptionsError(f"{where}.{name} must be {'>' if strict else '>='} "
                                   f"{minimum}, got {value}")


@dataclass(frozen=True)
class BaselineOptions(MethodOptions):
    """``baseline``: the student trained on the ground truth only (no distillation)."""


@dataclass(frozen=True)
class LogitKDOptions(MethodOptions):
    """``logit_kd``: Hinton et al. (2015) soft-label KD from a frozen teacher.

    Loss term ``weight * T² * KL(softmax(z_t/T) || softmax(z_s/T))`` averaged over voxels.
    """

    teacher: ClassVar[str] = "frozen"
    # Moderate defaults: on the synthetic benchmark T=2/w=1 and T=4/w=1 made single-modality
    # students stop predicting the tumour core (soft targets pull small classes into hedged,
    # edema-majority distributions); see README "Results".
    temperature: float = 2.0
    weight: float = 0.5

    def validate(self, where: str) -> None:
        self._require(where, ("temperature",), 0, strict=True)
        self._require(where, ("weight",), 0)


@dataclass(frozen=True)
class KDNetOptions(MethodOptions):
    """``kdnet``: KD-Net (Hu et al., MICCAI 2020), generalized distillation from a frozen teacher.

    ``kd_weight · soft_kl(T) + latent_weight · latent_kl(bottleneck)``. The paper's weights and
    temperature are not public (docs/methods.md): the defaults equal ``logit_kd``'s so that
    ``kdnet`` minus ``logit_kd`` isolates the latent term; ``latent_weight: 0`` is the ablation
    without it.
    """

    teacher: ClassVar[str] = "frozen"
    temperature: float = 2.0
    kd_weight: float = 0.5
    latent_weight: float = 1.0

    def validate(self, where: str) -> None:
        self._require(where, ("temperature",), 0, strict=True)
        self._require(where, ("kd_weight", "latent_weight"), 0)


@dataclass(frozen=True)
class PMKLOptions(MethodOptions):
    """``pmkl``: Chen et al. (IEEE TMI 2022), pixel-level regularized KD + image-level
    contrastive KD from a frozen teacher. Defaults from the official code (T=10, 0.5/0.5,
    margin 1, 16-d embeddings); the projection input is globally average-pooled instead of the
    original patch-size-tied 40³ pooling (flagged deviation)."""

    teacher: ClassVar[str] = "frozen"
    temperature: float = 10.0
    rkd_weight: float = 0.5
    ckd_weight: float = 0.5
    margin: float = 1.0
    embedding_dim: int = 16

    def validate(self, where: str) -> None:
        self._require(where, ("temperature",), 0, strict=True)
        self._require(where, ("rkd_weight", "ckd_weight", "margin"), 0)
        self._require(where, ("embedding_dim",), 1)


@dataclass(frozen=True)
class UMMKDOptions(MethodOptions):
    """``ummkd``: Dou et al. (IEEE TMI 2020), one network whose convolution kernels are shared by
    a full-modality stream and the student's stream while every normalisation layer is
    stream-specific; both streams' segmentation losses + ``kd_weight`` · symmetric KL between
    their class-wise derived prediction distributions (``temperature`` τ). Defaults from the
    official 2D code (μ_kd = 0.5, τ = 2).

    ``first_conv``: how the student's fewer input channels meet the shared first convolution:
    ``zero_fill`` (default) feeds the student stream all channels with the missing ones set to
    zero, so even the first kernel is shared; ``separate`` gives the student stream its own
    first convolution (all other kernels shared). ``unpaired``: the two streams draw their
    patches from different cases in every step, as in the paper's CT/MRI setting.
    """

    teacher: ClassVar[str] = "joint"
    kd_weight: float = 0.5
    temperature: float = 2.0
    first_conv: str = "zero_fill"
    unpaired: bool = False

    def validate(self, where: str) -> None:
        self._require(where, ("temperature",), 0, strict=True)
        self._require(where, ("kd_weight",), 0)
        if self.first_conv not in ("zero_fill", "separate"):
            raise OptionsError(f"{where}.first_conv must be 'zero_fill' or 'separate', "
                               f"got {self.first_conv!r}")


@dataclass(frozen=True)
class BarlowKDOptions(MethodOptions):
    """``barlow_kd``: Choi et al. (CMPB 2023), single-stage KD. Teacher path (all modalities) and
    student path are trained together on the same patch; ``bt_weight`` · Barlow Twins loss
    (off-diagonal weight ``bt_lambda``) between the two bottlenecks after a projector
    (``projector_dim`` wide), with bottleneck voxels as samples; deep supervision with
    cross-entropy on both paths (nnU-Net weights, ``ds_weight`` scales the auxiliary outputs).

    Readings of the paper's ambiguities (docs/methods.md): the teacher's latent is detached in
    the Barlow Twins term unless ``bt_to_teacher``; ``pixel_kd_weight`` > 0 adds the other
    reading of the pixel-level term (student outputs trained with CE against the teacher
    path's detached predictions, T = 1, at full resolution and at every deep-supervision
    resolution when ``ds_weight`` > 0).
    """

    teacher: ClassVar[str] = "joint"
    bt_weight: float = 0.01
    bt_lambda: float = 0.005
    projector_dim: int = 64
    bt_to_teacher: bool = False
    ds_weight: float = 1.0
    pixel_kd_weight: float = 0.0

    def validate(self, where: str) -> None:
        self._require(where, ("bt_weight", "bt_lambda", "ds_weight", "pixel_kd_weight"), 0)
        self._require(where, ("projector_dim",), 1)


METHOD_OPTIONS: dict[str, type[MethodOptions]] = {
    "baseline": BaselineOptions,
    "logit_kd": LogitKDOptions,
    "kdnet": KDNetOptions,
    "pmkl": PMKLOptions,
    "ummkd": UMMKDOptions,
    "barlow_kd": BarlowKDOptions,
}
"""Registry of method kinds -> options class. ``kdseg.distill.METHODS`` mirrors its keys."""


def _coerce(value: Any, kind: type, key: str) -> Any:
    # YAML gives ints where users mean floats (``temperature: 4``); accept that, refuse the rest.
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    raise OptionsError(f"{key} must be of type {kind.__name__}, got {value!r}")


def parse_method(name: str, block: Mapping[str, Any] | None) -> tuple[str, MethodOptions]:
    """Parse ``methods.<name>`` into ``(kind, options)``.

    ``kind`` defaults to ``name`` so that ``logit_kd: {temperature: 2}`` works; several entries
    may share a kind (ablations such as ``logit_kd_t2: {kind: logit_kd, temperature: 2}``).
    """
    where = f"methods.{name}"
    block = dict(block or {})
    kind = block.pop("kind", name)
    if kind not in METHOD_OPTIONS:
        raise OptionsError(
            f"{where}: unknown method kind {kind!r}; known kinds: {sorted(METHOD_OPTIONS)}"
        )
    cls = METHOD_OPTIONS[kind]
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(block) - set(fields))
    if unknown:
        raise OptionsError(
            f"{where}: unknown option(s) {unknown} for method kind {kind!r}; "
            f"known options: {sorted(fields) or 'none'}"
        )
    values = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in block.items()}
    options = cls(**values)
    options.validate(where)
    return kind, options


def options_dict(kind: str, options: MethodOptions) -> dict[str, Any]:
    """The fully resolved block (defaults filled in) as written to run configs and MLflow."""
    return {"kind": kind, **dataclasses.asdict(options)}
