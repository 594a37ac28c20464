"""``ummkd``: Dou et al. (IEEE TMI 2020), shared kernels with stream-specific normalisation.

One network, two streams: the full-modality ("teacher") stream and the student's subset stream.
Every convolution kernel is shared between them; every normalisation layer is stream-specific
(its own affine parameters and, with batch norm, its own running statistics). The trainer builds
the two paths as two ``DynUNet`` instances of the same architecture and :meth:`UMMKD.bind` makes
the student path's convolutions use the teacher path's parameters (the same ``Parameter``
objects), so one optimizer step updates the shared kernels from both streams' losses.

First-conv channel mismatch (an open choice of the paper; docs/methods.md):

* ``zero_fill`` (default): the student stream takes all modalities with the missing ones set to
  zero, so the first kernel is shared too. A zero channel contributes nothing to a convolution,
  so the trained student path equals a plain student network whose first kernel is the shared
  kernel restricted to the student's channels; :meth:`UMMKD.export_student` writes exactly
  that network, and inference needs nothing method-specific.
* ``separate``: the student stream has its own first convolution; all later kernels are shared.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from kdseg.distill.base import Distiller
from kdseg.distill.functional import class_prototype_kl
from kdseg.distill.options import UMMKDOptions
from kdseg.models.factory import NetOutput

STEM = "input_block.conv1.conv"
"""The first convolution of MONAI's ``DynUNet`` (the only layer that sees the input)."""


def share_convolutions(student: nn.Module, teacher: nn.Module,
                       skip: Sequence[str] = ()) -> int:
    """Make every convolution of ``student`` use the parameters of the same-named convolution
    of ``teacher`` (normalisation layers stay separate). Returns the number of shared layers.

    The shared parameters keep the student's initial values, so a seed's student path starts
    where every other method's student starts (apart from a zero-filled stem, which has more
    input channels).

    Both networks must have the same architecture; modules named in ``skip`` keep their own
    parameters.
    """
    teacher_modules = dict(teacher.named_modules())
    skipped = {id(student.get_submodule(name)) for name in skip}  # DynUNet aliases modules
    shared = 0
    for name, module in student.named_modules():
        if not isinstance(module, _ConvNd) or id(module) in skipped:
            continue
        other = teacher_modules.get(name)
        if not isinstance(other, _ConvNd):
            raise ValueError(f"ummkd: the teacher path has no convolution {name!r} to share")
        if other.weight.shape != module.weight.shape:
            raise ValueError(f"ummkd: convolution {name!r} is {tuple(module.weight.shape)} in the "
                             f"student path but {tuple(other.weight.shape)} in the teacher path")
        with torch.no_grad():  # start from the student's initial weights (as every method)
            other.weight.copy_(module.weight)
            if module.bias is not None:
                other.bias.copy_(module.bias)
        module.weight = other.weight
        if module.bias is not None:
            module.bias = other.bias
        shared += 1
    return shared


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same storage and view (``state_dict`` returns a fresh detached tensor per key)."""
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


class UMMKD(Distiller):
    """``kd_weight · class_prototype_kl(z_full, y_full, z_student, y_student, τ)``; the trainer
    adds both streams' segmentation losses. Gradients reach both streams (no stop-gradient, as
    in the original code)."""

    options_type = UMMKDOptions

    @property
    def _opts(self) -> UMMKDOptions:
        return self.options  # type: ignore[return-value]

    def student_in_channels(self, n_student: int, n_all: int) -> int:
        return n_all if self._opts.first_conv == "zero_fill" else n_student

    def student_input(self, image: torch.Tensor, channels: Sequence[int]) -> torch.Tensor:
        if self._opts.first_conv != "zero_fill":
            return super().student_input(image, channels)
        x = torch.zeros_like(image)
        x[:, list(channels)] = image[:, list(channels)]
        return x

    def bind(self, student: nn.Module, teacher: nn.Module) -> None:
        skip = (STEM,) if self._opts.first_conv == "separate" else ()
        if share_convolutions(student, teacher, skip) == 0:
            raise ValueError("ummkd: the networks have no convolution to share")

    def export_student(self, state: dict[str, torch.Tensor],
                       channels: Sequence[int]) -> dict[str, torch.Tensor]:
        if self._opts.first_conv != "zero_fill":
            return state
        stem = state[f"{STEM}.weight"]  # (C_out, C_all, k, k, k)
        sliced = stem[:, list(channels)].clone()  # -> the student's input channels only
        # DynUNet registers the stem under several names (skip_layers aliases): slice them all.
        return {k: sliced if _same_tensor(v, stem) else v for k, v in state.items()}

    def forward(self, student: NetOutput, teacher: NetOutput | None, target: torch.Tensor,
                teacher_target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if teacher is None:
            raise ValueError("ummkd needs the full-modality stream's output")
        full_target = target if teacher_target is None else teacher_target
        kd = class_prototype_kl(teacher.logits, full_target, student.logits, target,
                                self._opts.temperature)
        return {"kd_prototype": self._opts.kd_weight * kd}
