"""``pmkl``: Chen et al. (IEEE TMI 2022), regularized pixel KD + image-level contrastive KD."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from kdseg.distill.base import Distiller
from kdseg.distill.functional import contrastive_kd, regularized_kd
from kdseg.distill.options import PMKLOptions
from kdseg.models.factory import NetOutput

FEATURE = "decoder_last"


def projection_head(channels: int, dim: int) -> nn.Sequential:
    """Global average pool ``(B, C, D, H, W) -> (B, C)``, then a 2-layer MLP to ``(B, dim)``.

    Global pooling replaces the original 40³ stride-1 pooling tied to an 80³ patch (flagged
    deviation: it keeps the head independent of the patch size).
    """
    return nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(channels, channels),
                         nn.ReLU(inplace=True), nn.Linear(channels, dim))


class PMKL(Distiller):
    """``rkd_weight · L_rkd + ckd_weight · L_ckd``; both projection heads train with the student
    (the teacher itself stays frozen). Needs batch size >= 2 for contrastive negatives."""

    options_type = PMKLOptions
    student_taps = (FEATURE,)
    teacher_taps = (FEATURE,)

    def __init__(self, options: PMKLOptions, channels: Mapping[str, int],
                 num_classes: int) -> None:
        super().__init__(options, channels, num_classes)
        self.student_head = projection_head(channels[FEATURE], options.embedding_dim)
        self.teacher_head = projection_head(channels[FEATURE], options.embedding_dim)

    def forward(self, student: NetOutput, teacher: NetOutput | None, target: torch.Tensor,
                teacher_target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if teacher is None:
            raise ValueError("pmkl needs the teacher's output")
        opts: PMKLOptions = self.options  # type: ignore[assignment]
        rkd = regularized_kd(student.logits, teacher.logits.detach(), target, opts.temperature)
        z_s = self.student_head(student.features[FEATURE].float())
        z_t = self.teacher_head(teacher.features[FEATURE].detach().float())
        return {"kd_pixel": opts.rkd_weight * rkd,
                "kd_contrast": opts.ckd_weight * contrastive_kd(z_s, z_t, opts.margin)}
