"""Method registry and the distiller contract."""

from __future__ import annotations

import torch

from kdseg.distill.options import METHOD_OPTIONS
from kdseg.distill.registry import METHODS, build_distiller
from kdseg.models.factory import NetOutput


def test_registry_matches_options() -> None:
    assert set(METHODS) == set(METHOD_OPTIONS) == {"baseline", "logit_kd"}


def test_logit_kd_zero_when_equal_and_no_teacher_gradient() -> None:
    kd = build_distiller({"name": "logit_kd", "kind": "logit_kd", "temperature": 3.0,
                          "weight": 2.0})
    assert kd.needs_teacher
    logits = torch.randn(2, 4, 4, 4, 4)
    target = torch.zeros(2, 1, 4, 4, 4, dtype=torch.long)
    same = kd(NetOutput(logits), NetOutput(logits.clone()), target)
    assert set(same) == {"kd_logit"} and same["kd_logit"].item() < 1e-6
    student = torch.randn(2, 4, 4, 4, 4, requires_grad=True)
    teacher = torch.randn(2, 4, 4, 4, 4, requires_grad=True)
    terms = kd(NetOutput(student), NetOutput(teacher), target)
    terms["kd_logit"].backward()
    assert student.grad is not None and teacher.grad is None  # the teacher is detached


def test_baseline_adds_nothing() -> None:
    base = build_distiller({"name": "baseline", "kind": "baseline"})
    assert not base.needs_teacher
    assert base(NetOutput(torch.zeros(1, 4, 2, 2, 2)), None, torch.zeros(1, 1, 2, 2, 2)) == {}
