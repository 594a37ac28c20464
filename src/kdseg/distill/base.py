"""The one contract every distillation method implements.

A method is an ``nn.Module`` built from its validated options. The trainer gives it the
student's output, the teacher's output (``None`` when the method needs no teacher) and the
target; it returns **named, already weighted** loss terms. The trainer adds the segmentation
loss, sums everything and logs every term; it never branches on the method's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn

from kdseg.distill.options import MethodOptions
from kdseg.models.factory import NetOutput


class Distiller(nn.Module):
    """Base class. Subclasses set the class attributes and implement :meth:`forward`.

    Class attributes:
        options_type: the method's options dataclass.
        student_taps / teacher_taps: feature tap names the method reads (see
            :mod:`kdseg.models.factory`); the trainer records only these.
    """

    options_type: ClassVar[type[MethodOptions]] = MethodOptions
    student_taps: ClassVar[tuple[str, ...]] = ()
    teacher_taps: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: MethodOptions, channels: Mapping[str, int]) -> None:
        """``channels``: feature tap name -> channel count of that feature (for heads)."""
        super().__init__()
        if not isinstance(options, self.options_type):
            raise TypeError(
                f"{type(self).__name__} needs {self.options_type.__name__}, "
                f"got {type(options).__name__}"
            )
        self.options = options

    @property
    def needs_teacher(self) -> bool:
        return self.options.needs_teacher

    def forward(self, student: NetOutput, teacher: NetOutput | None,
                target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named weighted loss terms.

        Args:
            student: student logits ``(B, K, D, H, W)`` and requested features.
            teacher: teacher output (computed without gradient) or ``None``.
            target: ``(B, 1, D, H, W)`` integer class ids.
        """
        raise NotImplementedError
