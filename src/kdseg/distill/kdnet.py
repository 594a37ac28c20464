"""``kdnet``: KD-Net (Hu et al., MICCAI 2020), soft labels + latent-space distillation."""

from __future__ import annotations

import torch

from kdseg.distill.base import Distiller
from kdseg.distill.functional import latent_kl, soft_kl
from kdseg.distill.options import KDNetOptions
from kdseg.models.factory import NetOutput


class KDNet(Distiller):
    """``kd_weight · soft_kl(z_s, z_t, T) + latent_weight · latent_kl(h_s, h_t)``.

    ``h`` is the bottleneck feature (deepest encoder output) of the shared backbone; teacher and
    student have the same width there, so no adapter is needed (docs/methods.md §1.10).
    """

    options_type = KDNetOptions
    student_taps = ("bottleneck",)
    teacher_taps = ("bottleneck",)

    def forward(self, student: NetOutput, teacher: NetOutput | None, target: torch.Tensor,
                teacher_target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if teacher is None:
            raise ValueError("kdnet needs the teacher's output")
        opts: KDNetOptions = self.options  # type: ignore[assignment]
        terms = {"kd_logit": opts.kd_weight * soft_kl(student.logits, teacher.logits.detach(),
                                                      opts.temperature)}
        if opts.latent_weight > 0:
            terms["kd_latent"] = opts.latent_weight * latent_kl(
                student.features["bottleneck"], teacher.features["bottleneck"].detach())
        return terms
