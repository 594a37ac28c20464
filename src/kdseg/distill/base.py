"""The one contract every distillation method implements.

A method is an ``nn.Module`` built from its validated options. The trainer gives it the
student's output, the teacher's output (``None`` when the method has no teacher) and the
targets; it returns **named, already weighted** loss terms. The trainer adds the segmentation
loss (and, for a jointly trained teacher path, the teacher's segmentation loss), sums
everything and logs every term; it never branches on the method's name.

Where the teacher comes from is the options' ``teacher`` (``none`` | ``frozen`` | ``joint``).
Single-stage methods (``joint``) may also reshape the student network through three hooks
with identity defaults: :meth:`Distiller.student_in_channels`, :meth:`Distiller.bind` (e.g.
share convolution kernels between the two paths) and :meth:`Distiller.export_student` (turn
the trained student path into a plain student network's ``state_dict``, the artifact that
inference reads).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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

    Attributes:
        options: the validated options.
        num_classes: K.
    """

    options_type: ClassVar[type[MethodOptions]] = MethodOptions
    student_taps: tuple[str, ...] = ()  # an instance may set its own (depth-dependent taps)
    teacher_taps: tuple[str, ...] = ()

    def __init__(self, options: MethodOptions, channels: Mapping[str, int],
                 num_classes: int) -> None:
        """``channels``: feature tap name -> channel count of that feature (for heads);
        ``num_classes``: K, the networks' output channels."""
        super().__init__()
        if not isinstance(options, self.options_type):
            raise TypeError(
                f"{type(self).__name__} needs {self.options_type.__name__}, "
                f"got {type(options).__name__}"
            )
        self.options = options
        self.num_classes = num_classes

    @property
    def teacher(self) -> str:
        """``none`` | ``frozen`` | ``joint`` (see :class:`MethodOptions`)."""
        return self.options.teacher

    @property
    def needs_teacher(self) -> bool:
        """True when the method reads a separately trained, frozen teacher run."""
        return self.options.needs_teacher

    @property
    def unpaired(self) -> bool:
        """True when the teacher path must see patches of *other* cases than the student."""
        return bool(getattr(self.options, "unpaired", False))

    # ------------------------------------------------------------ network hooks (joint methods)
    def student_in_channels(self, n_student: int, n_all: int) -> int:
        """Input channels of the student path *during training* (default: its modalities)."""
        return n_student

    def student_input(self, image: torch.Tensor, channels: Sequence[int]) -> torch.Tensor:
        """The student path's input from the full-modality batch ``(B, C_all, D, H, W)``."""
        return image[:, list(channels)]

    def bind(self, student: nn.Module, teacher: nn.Module) -> None:
        """Tie the student path to a jointly trained teacher path (called once, before the
        optimizer is built). Default: the two paths share nothing."""

    def export_student(self, state: dict[str, torch.Tensor],
                       channels: Sequence[int]) -> dict[str, torch.Tensor]:
        """``state_dict`` of a plain student network (``len(channels)`` inputs) equivalent to
        the trained student path. Default: the student path already is one."""
        return state

    # ------------------------------------------------------------------------------- the loss
    def forward(self, student: NetOutput, teacher: NetOutput | None, target: torch.Tensor,
                teacher_target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Named weighted loss terms.

        Args:
            student: student logits ``(B, K, D, H, W)`` and requested features.
            teacher: teacher output, or ``None``. A frozen teacher's output carries no
                gradient; a joint teacher path's does.
            target: ``(B, 1, D, H, W)`` integer class ids of the student's patches.
            teacher_target: class ids of the teacher path's patches when they differ from the
                student's (unpaired methods); ``None`` means ``target``.
        """
        raise NotImplementedError
