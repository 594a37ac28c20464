"""soft_kl: golden values and properties (Hinton et al. 2015 soft-target loss, T²-scaled)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdseg.distill.functional import soft_kl


def test_golden_two_classes() -> None:
    # One voxel, K=2. Teacher logits (0, 0) -> p_t = (1/2, 1/2);
    # student (ln 3, 0) -> p_s = (3/4, 1/4).
    # KL = 1/2 ln((1/2)/(3/4)) + 1/2 ln((1/2)/(1/4)) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3).
    student = torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1, 1)
    teacher = torch.zeros(1, 2, 1, 1, 1)
    assert soft_kl(student, teacher, 1.0).item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)
    # At T=2 the logits halve: p_s = softmax(ln3/2, 0) = (√3/(√3+1), 1/(√3+1)); scaled by T²=4.
    ps = [math.sqrt(3) / (math.sqrt(3) + 1), 1 / (math.sqrt(3) + 1)]
    expected = 4 * sum(0.5 * math.log(0.5 / p) for p in ps)
    assert soft_kl(student, teacher, 2.0).item() == pytest.approx(expected, abs=1e-6)


def test_mean_over_batch_and_voxels() -> None:
    student = torch.zeros(2, 3, 1, 1, 2)
    teacher = torch.zeros(2, 3, 1, 1, 2)
    student[0, 0, 0, 0, 0] = 5.0  # only one of 4 voxels differs
    one = soft_kl(student[:1, :, :, :, :1], teacher[:1, :, :, :, :1], 1.0)
    assert soft_kl(student, teacher, 1.0).item() == pytest.approx(one.item() / 4, rel=1e-6)


logits = st.lists(st.floats(-20, 20), min_size=3, max_size=3)


@settings(max_examples=50, deadline=None)
@given(s=logits, t=logits, shift=st.floats(-100, 100), temp=st.floats(0.5, 10))
def test_properties(s: list[float], t: list[float], shift: float, temp: float) -> None:
    zs = torch.tensor(s).view(1, 3, 1, 1, 1)
    zt = torch.tensor(t).view(1, 3, 1, 1, 1)
    value = soft_kl(zs, zt, temp).item()
    assert value >= -1e-6  # KL is non-negative
    assert soft_kl(zs, zs, temp).item() == pytest.approx(0.0, abs=1e-6)
    # invariant to adding a constant to all class logits of a voxel
    assert soft_kl(zs + shift, zt, temp).item() == pytest.approx(value, abs=1e-4)


def test_finite_gradients_at_extreme_logits_and_no_teacher_gradient() -> None:
    student = torch.tensor([1e4, -1e4, 0.0]).view(1, 3, 1, 1, 1).requires_grad_(True)
    teacher = torch.tensor([-1e4, 1e4, 0.0]).view(1, 3, 1, 1, 1).requires_grad_(True)
    loss = soft_kl(student, teacher.detach(), 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    assert teacher.grad is None


def test_shape_and_temperature_errors() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        soft_kl(torch.zeros(1, 3, 2, 2, 2), torch.zeros(1, 4, 2, 2, 2), 1.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        soft_kl(torch.zeros(1, 3, 2), torch.zeros(1, 3, 2), 0.0)
