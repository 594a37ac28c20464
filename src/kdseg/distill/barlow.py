"""``barlow_kd``: Choi et al. (CMPB 2023), single-stage KD with Barlow Twins and deep supervision.

The teacher path (all modalities) and the student path are two networks of the same
architecture, trained together: every iteration forwards the same patch through both, and one
optimizer step updates both from the sum of

* both paths' segmentation losses (added by the trainer; the protocol's Dice+CE on the
  full-resolution output),
* deep supervision on both paths: cross-entropy of 1×1×1 heads on the lower-resolution decoder
  stages against nearest-downsampled labels, with nnU-Net's weights (``2^-k`` relative to the
  full-resolution output, the lowest resolution weighted 0),
* ``bt_weight`` · Barlow Twins between projected bottleneck features of the two paths, each
  bottleneck voxel one sample (with batch 2 a per-patch cross-correlation is degenerate;
  docs/methods.md),
* optionally (``pixel_kd_weight`` > 0) CE of the student's outputs against the teacher path's
  (detached, T = 1) predictions at full resolution and, when deep supervision is on, at every
  supervised resolution (the other reading of "pixel-level KD").

The heads and projectors live here, so the exported student is a plain network.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from kdseg.distill.base import Distiller
from kdseg.distill.functional import barlow_twins
from kdseg.distill.options import BarlowKDOptions
from kdseg.models.factory import NetOutput

LATENT = "bottleneck"


def nnunet_ds_weights(n_outputs: int) -> list[float]:
    """nnU-Net's deep-supervision weights for outputs ordered full resolution first:
    ``w_k ∝ 2^-k``, the lowest resolution 0 (when there is more than one output), sum 1."""
    if n_outputs < 1:
        raise ValueError(f"nnunet_ds_weights: need >= 1 output, got {n_outputs}")
    weights = [0.5**k for k in range(n_outputs)]
    if n_outputs > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def downsample_labels(target: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Class ids ``(B, 1, *S)`` -> ``(B, *size)`` by nearest neighbour (nnU-Net does the same
    for its deep-supervision targets)."""
    if target.shape[2:] == size:
        return target[:, 0].long()
    return F.interpolate(target.float(), size=size, mode="nearest-exact")[:, 0].long()


def projector(channels: int, dim: int) -> nn.Sequential:
    """Barlow Twins projector (Linear-BN-ReLU-Linear, the reference's shape at a small width)
    acting on samples ``(N, channels) -> (N, dim)``."""
    return nn.Sequential(nn.Linear(channels, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                         nn.Linear(dim, dim))


def voxels_as_samples(feature: torch.Tensor) -> torch.Tensor:
    """``(B, C, d, h, w) -> (B·d·h·w, C)``: every bottleneck voxel is one Barlow Twins sample."""
    return feature.movedim(1, -1).reshape(-1, feature.shape[1])


class BarlowKD(Distiller):
    """Single-stage teacher+student training; see the module docstring for the loss."""

    options_type = BarlowKDOptions

    def __init__(self, options: BarlowKDOptions, channels: Mapping[str, int],
                 num_classes: int) -> None:
        super().__init__(options, channels, num_classes)
        # decoder stage i (0 = deepest) gives output k = n - 1 - i (0 = full resolution)
        n_outputs = sum(k.removeprefix("decoder_").isdigit() for k in channels)
        weights = nnunet_ds_weights(n_outputs)
        self.ds_levels = [(f"decoder_{n_outputs - 1 - k}", weights[k] / weights[0])
                          for k in range(1, n_outputs) if weights[k] > 0]
        taps = (LATENT, *(tap for tap, _ in self.ds_levels))
        self.student_taps = taps
        self.teacher_taps = taps
        self.student_heads = nn.ModuleDict(
            {tap: nn.Conv3d(channels[tap], num_classes, 1) for tap, _ in self.ds_levels})
        self.teacher_heads = nn.ModuleDict(
            {tap: nn.Conv3d(channels[tap], num_classes, 1) for tap, _ in self.ds_levels})
        self.student_projector = projector(channels[LATENT], options.projector_dim)
        self.teacher_projector = projector(channels[LATENT], options.projector_dim)

    @property
    def _opts(self) -> BarlowKDOptions:
        return self.options  # type: ignore[return-value]

    def _ds_outputs(self, out: NetOutput, heads: nn.ModuleDict) -> list[tuple[torch.Tensor,
                                                                               float]]:
        return [(heads[tap](out.features[tap].float()), w) for tap, w in self.ds_levels]

    def forward(self, student: NetOutput, teacher: NetOutput | None, target: torch.Tensor,
                teacher_target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if teacher is None:
            raise ValueError("barlow_kd needs the teacher path's output")
        opts = self._opts
        t_target = target if teacher_target is None else teacher_target
        terms: dict[str, torch.Tensor] = {}
        # the low-resolution heads are used (and trained) only with deep supervision on
        s_ds = self._ds_outputs(student, self.student_heads) if opts.ds_weight > 0 else []
        t_ds = self._ds_outputs(teacher, self.teacher_heads) if opts.ds_weight > 0 else []
        if s_ds:
            terms["ds_student"] = opts.ds_weight * sum(
                w * F.cross_entropy(z, downsample_labels(target, z.shape[2:])) for z, w in s_ds)
            terms["ds_teacher"] = opts.ds_weight * sum(
                w * F.cross_entropy(z, downsample_labels(t_target, z.shape[2:]))
                for z, w in t_ds)
        h_s = voxels_as_samples(student.features[LATENT].float())
        h_t = voxels_as_samples(teacher.features[LATENT].float())
        if not opts.bt_to_teacher:
            h_t = h_t.detach()
        # fp32 even under bf16 autocast: the diagonal C_kk ≈ 1 would be quantised in steps of
        # ~0.004 in bf16, which is the size of the signal the loss works with.
        with torch.autocast(h_s.device.type, enabled=False):
            z_s, z_t = self.student_projector(h_s), self.teacher_projector(h_t)
            terms["kd_barlow"] = opts.bt_weight * barlow_twins(z_t, z_s, opts.bt_lambda)
        if opts.pixel_kd_weight > 0:
            pairs = [(student.logits.float(), teacher.logits.float(), 1.0)]
            pairs += [(zs, zt, w) for (zs, w), (zt, _) in zip(s_ds, t_ds, strict=True)]
            terms["kd_pixel"] = opts.pixel_kd_weight * sum(
                w * -(F.softmax(zt.detach(), dim=1) * F.log_softmax(zs, dim=1)).sum(1).mean()
                for zs, zt, w in pairs)
        return terms
