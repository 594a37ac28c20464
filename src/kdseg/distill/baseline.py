"""``baseline``: no distillation; the student learns from the ground truth alone."""

from __future__ import annotations

import torch

from kdseg.distill.base import Distiller
from kdseg.distill.options import BaselineOptions
from kdseg.models.factory import NetOutput


class Baseline(Distiller):
    """Adds no loss term: the trainer's segmentation loss is the whole objective."""

    options_type = BaselineOptions

    def forward(self, student: NetOutput, teacher: NetOutput | None, target: torch.Tensor,
                teacher_target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {}
