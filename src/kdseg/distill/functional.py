"""Pure distillation loss functions (tensor in, scalar tensor out).

Shapes: logits ``(B, K, *spatial)`` with ``K`` classes on axis 1. Each function cites the method
it comes from. They are deliberately free of module state so they can be tested on their own
and reused by several methods.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """Temperature-softened KL divergence of Hinton et al. (2015), "Distilling the knowledge in
    a neural network", eq. for the soft-target loss, scaled by T² so its gradient magnitude does
    not shrink as T grows:

    ``T² · mean_{b, voxels} Σ_k p_t,k (log p_t,k − log p_s,k)``, ``p = softmax(logits / T)`` over K.

    Computed with ``log_softmax`` on both sides, so it stays finite for logits of ±1e4, is exactly
    0 when the logits are equal and is invariant to adding a constant to all K logits of a voxel.
    Gradients flow into ``teacher_logits`` too if they require grad; detach a frozen teacher.

    Args:
        student_logits: ``(B, K, *spatial)``.
        teacher_logits: same shape as ``student_logits``.
        temperature: ``T > 0``.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"soft_kl: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    if temperature <= 0:
        raise ValueError(f"soft_kl: temperature must be > 0, got {temperature}")
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl_per_voxel = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    return temperature**2 * kl_per_voxel.mean()
