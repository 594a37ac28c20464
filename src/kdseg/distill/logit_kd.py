"""``logit_kd``: Hinton-style soft-label distillation from a frozen multi-modal teacher."""

from __future__ import annotations

import torch

from kdseg.distill.base import Distiller
from kdseg.distill.functional import soft_kl
from kdseg.distill.options import LogitKDOptions
from kdseg.models.factory import NetOutput


class LogitKD(Distiller):
    """``weight · soft_kl(student, teacher, T)``; teacher and student see the same patch."""

    options_type = LogitKDOptions

    def forward(self, student: NetOutput, teacher: NetOutput | None, target: torch.Tensor,
                teacher_target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if teacher is None:
            raise ValueError("logit_kd needs the teacher's output")
        opts: LogitKDOptions = self.options  # type: ignore[assignment]
        kd = soft_kl(student.logits, teacher.logits.detach(), opts.temperature)
        return {"kd_logit": opts.weight * kd}
