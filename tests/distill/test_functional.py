"""Pure distillation losses: golden values and properties.

soft_kl (Hinton et al. 2015), latent_kl (KD-Net), class_prototype_kl (UMMKD), regularized_kd and
contrastive_kd (PMKL), barlow_twins (Choi et al., through MONAI).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.losses import BarlowTwinsLoss

from kdseg.distill.functional import (
    barlow_twins,
    class_prototype_kl,
    contrastive_kd,
    latent_kl,
    regularized_kd,
    soft_kl,
)


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


# =============================================================================================
# Shared helpers for the four published methods
# =============================================================================================

# Logits on a 1/8 grid: adding a shift that is also a multiple of 1/8 is exact in float32, so
# argmax ties (which decide PMKL's teacher-is-right mask) survive the shift unchanged.
grid_logit = st.integers(-160, 160).map(lambda k: k / 8)
grid_shift = st.integers(-800, 800).map(lambda k: k / 8)


def _vox(values: list[float], k: int) -> torch.Tensor:
    """``values`` (voxel-major, K per voxel) -> logits ``(1, K, n_voxels)``."""
    return torch.tensor(values, dtype=torch.float32).view(-1, k).T.unsqueeze(0).contiguous()


def _extreme_logits(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Logits drawn from {-1e4, 0, 1e4}."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(-1, 2, shape, generator=gen) * 1e4).float()


# =============================================================================================
# latent_kl (KD-Net)
# =============================================================================================


def test_latent_kl_golden() -> None:
    # B=1, C=2, two locations. Location 0: teacher (0, 0) -> (1/2, 1/2), student (ln 3, 0)
    # -> (3/4, 1/4): KL = 1/2 ln((1/2)/(3/4)) + 1/2 ln((1/2)/(1/4)) = 1/2 ln(4/3).
    # Location 1: equal features -> 0. Mean over the 2 locations: 1/4 ln(4/3).
    student = torch.tensor([[[math.log(3.0), 1.0], [0.0, 2.0]]])  # (1, C=2, 2)
    teacher = torch.tensor([[[0.0, 1.0], [0.0, 2.0]]])
    assert latent_kl(student, teacher).item() == pytest.approx(0.25 * math.log(4 / 3), abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(s=st.lists(grid_logit, min_size=6, max_size=6), t=st.lists(grid_logit, min_size=6,
       max_size=6), shift=st.lists(grid_shift, min_size=2, max_size=2))
def test_latent_kl_properties(s: list[float], t: list[float], shift: list[float]) -> None:
    hs, ht = _vox(s, 3), _vox(t, 3)  # (1, C=3, 2 locations)
    value = latent_kl(hs, ht).item()
    assert value >= -1e-6
    assert latent_kl(hs, hs).item() == pytest.approx(0.0, abs=1e-6)
    per_location = torch.tensor(shift).view(1, 1, 2)  # one constant per location
    assert latent_kl(hs + per_location, ht).item() == pytest.approx(value, abs=1e-4)


def test_latent_kl_extremes_detached_teacher_and_errors() -> None:
    student = _extreme_logits((2, 4, 3, 3), 0).requires_grad_(True)
    teacher = _extreme_logits((2, 4, 3, 3), 1).requires_grad_(True)
    loss = latent_kl(student, teacher.detach())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    assert teacher.grad is None
    with pytest.raises(ValueError, match=r"latent_kl: student_feat .* differ in shape"):
        latent_kl(torch.zeros(1, 4, 2, 2), torch.zeros(1, 8, 2, 2))


# =============================================================================================
# class_prototype_kl (UMMKD)
# =============================================================================================


def test_class_prototype_kl_golden_skips_absent_class_and_unpaired_shapes() -> None:
    # K=2, τ=1. Stream a: B=1, 2 voxels, labels (0, 1); class-0 voxel logits (ln 3, 0).
    # Stream b: B=2, 1 voxel each, both labelled 0, logits (ln 9, 0) and (−ln 9, 0):
    # mean (0, 0). Class 1 is absent from b, so only class 0 counts.
    # q_a = (3/4, 1/4), q_b = (1/2, 1/2).
    # ½[KL(a‖b)+KL(b‖a)] = ½ Σ (q_a − q_b)(ln q_a − ln q_b)
    #   = ½[¼ ln(3/2) + (−¼) ln(1/2)] = ½ · ¼ ln 3 = ln(3)/8.
    # (Averaging over both classes as the original code does would give ln(3)/16 or more.)
    logits_a = torch.tensor([[[math.log(3.0), 5.0], [0.0, -1.0]]])  # (1, 2, 2)
    labels_a = torch.tensor([[0, 1]])
    logits_b = torch.tensor([[[math.log(9.0)], [0.0]], [[-math.log(9.0)], [0.0]]])  # (2, 2, 1)
    labels_b = torch.tensor([[0], [0]])
    value = class_prototype_kl(logits_a, labels_a, logits_b, labels_b, 1.0)
    assert value.item() == pytest.approx(math.log(3.0) / 8, abs=1e-6)
    # (B, 1, *spatial) labels are accepted too.
    same = class_prototype_kl(logits_a, labels_a.unsqueeze(1), logits_b, labels_b.unsqueeze(1), 1.0)
    assert same.item() == pytest.approx(value.item(), abs=1e-7)
    # τ = 2 halves the mean logits: q_a = (√3/(√3+1), 1/(√3+1)), q_b = (1/2, 1/2).
    qa = [math.sqrt(3) / (math.sqrt(3) + 1), 1 / (math.sqrt(3) + 1)]
    expected = 0.5 * sum((p - 0.5) * (math.log(p) - math.log(0.5)) for p in qa)
    assert class_prototype_kl(logits_a, labels_a, logits_b, labels_b, 2.0).item() == (
        pytest.approx(expected, abs=1e-6))


def test_class_prototype_kl_averages_over_shared_classes() -> None:
    # K=2, τ=1, both classes present in both streams. Class 0 as in the golden test above
    # (ln(3)/8); class 1: a's mean (0, 0), b's mean (0, 0) -> 0. Mean over 2 classes: ln(3)/16.
    logits_a = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0]]])
    logits_b = torch.tensor([[[0.0, 2.0], [0.0, 2.0]]])  # class-1 voxel (2, 2) ~ (0, 0)
    labels = torch.tensor([[0, 1]])
    value = class_prototype_kl(logits_a, labels, logits_b, labels, 1.0)
    assert value.item() == pytest.approx(math.log(3.0) / 16, abs=1e-6)


def test_class_prototype_kl_no_shared_class_is_zero_with_gradients() -> None:
    logits_a = torch.randn(1, 3, 4, requires_grad=True)
    logits_b = torch.randn(2, 3, 2, requires_grad=True)
    loss = class_prototype_kl(logits_a, torch.zeros(1, 4, dtype=torch.long),
                              logits_b, torch.full((2, 2), 2), 2.0)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits_a.grad, torch.zeros_like(logits_a))
    assert torch.equal(logits_b.grad, torch.zeros_like(logits_b))


@settings(max_examples=40, deadline=None)
@given(a=st.lists(grid_logit, min_size=12, max_size=12),
       b=st.lists(grid_logit, min_size=6, max_size=6),
       la=st.lists(st.integers(0, 2), min_size=4, max_size=4),
       lb=st.lists(st.integers(0, 2), min_size=2, max_size=2),
       shift=st.lists(grid_shift, min_size=4, max_size=4), temp=st.floats(0.5, 5))
def test_class_prototype_kl_properties(a: list[float], b: list[float], la: list[int],
                                       lb: list[int], shift: list[float], temp: float) -> None:
    za, zb = _vox(a, 3), _vox(b, 3)  # 4 voxels vs 2 voxels: unpaired streams
    ya, yb = torch.tensor([la]), torch.tensor([lb])
    value = class_prototype_kl(za, ya, zb, yb, temp).item()
    assert value >= -1e-6
    assert class_prototype_kl(za, ya, za, ya, temp).item() == pytest.approx(0.0, abs=1e-6)
    assert class_prototype_kl(zb, yb, za, ya, temp).item() == pytest.approx(value, abs=1e-5)
    shifted = za + torch.tensor(shift).view(1, 1, 4)  # one constant per voxel
    assert class_prototype_kl(shifted, ya, zb, yb, temp).item() == pytest.approx(value, abs=1e-4)


def test_class_prototype_kl_extremes_and_errors() -> None:
    za = _extreme_logits((2, 3, 4, 4), 2).requires_grad_(True)
    zb = _extreme_logits((1, 3, 5, 3), 3).requires_grad_(True)
    ya = torch.arange(32).remainder(3).view(2, 4, 4)
    yb = torch.arange(15).remainder(3).view(1, 5, 3)
    loss = class_prototype_kl(za, ya, zb, yb, 2.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(za.grad).all() and torch.isfinite(zb.grad).all()
    with pytest.raises(ValueError, match="both streams must share K"):
        class_prototype_kl(za, ya, torch.zeros(1, 4, 5, 3), yb, 2.0)
    with pytest.raises(ValueError, match="labels_b has shape"):
        class_prototype_kl(za, ya, zb, yb[:, :4], 2.0)
    with pytest.raises(ValueError, match=r"labels_a values must lie in \[0, 3\)"):
        class_prototype_kl(za, ya + 1, zb, yb, 2.0)
    with pytest.raises(ValueError, match="labels_a must hold integer"):
        class_prototype_kl(za, ya.float(), zb, yb, 2.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        class_prototype_kl(za, ya, zb, yb, 0.0)


# =============================================================================================
# regularized_kd (PMKL)
# =============================================================================================


def test_regularized_kd_golden() -> None:
    # K=2, T=1, all labels 0. Per voxel: teacher / student logits -> ℓ_t, ℓ_s, r, h.
    # v0: t (ln 3, 0) p_t=(3/4,1/4), ℓ_t=ln(4/3); s (0, 0) p_s=(1/2,1/2), ℓ_s=ln 2.
    #     r = ln 2 − ln(4/3) = ln(3/2);  h = −(3/4 + 1/4) ln(1/2) = ln 2.
    # v1: t (0, ln 3): teacher predicts 1 ≠ 0 -> r = 0.
    # v2: t (ln 3, 0); s (ln 9, 0): ℓ_s = ln(10/9) < ℓ_t -> r = 0 (student already better).
    # v3: t (ln 3, 0); s (0, ln 3) p_s=(1/4,3/4), ℓ_s = ln 4 -> r = ln 3;
    #     h = −(3/4 ln(1/4) + 1/4 ln(3/4)) = ln 4 − ¼ ln 3.
    # L = [ln(3/2) ln 2 + ln 3 (ln 4 − ¼ ln 3)] / [ln(3/2) + ln 3].
    ln3 = math.log(3.0)
    teacher = _vox([ln3, 0, 0, ln3, ln3, 0, ln3, 0], 2)
    student = _vox([0, 0, 5, 0, math.log(9.0), 0, 0, ln3], 2)
    labels = torch.zeros(1, 4, dtype=torch.long)
    r0, r3 = math.log(1.5), ln3
    expected = (r0 * math.log(2) + r3 * (math.log(4) - ln3 / 4)) / (r0 + r3)
    assert regularized_kd(student, teacher, labels, 1.0).item() == pytest.approx(expected, abs=1e-6)
    # (B, 1, *spatial) labels give the same value.
    same = regularized_kd(student, teacher, labels.unsqueeze(1), 1.0)
    assert same.item() == pytest.approx(expected, abs=1e-6)


def test_regularized_kd_clip_and_temperature_golden() -> None:
    # One voxel, label 0: the single weight cancels, so L = h.
    # t (ln 3, 0) -> ℓ_t = ln(4/3); s (−ln 999, 0) -> p_s = (1/1000, 999/1000), ℓ_s = ln 1000.
    # T=1: p_s,0 = 0.001 is clipped to 0.005: h = −(3/4 ln 0.005 + 1/4 ln 0.999).
    teacher = _vox([math.log(3.0), 0.0], 2)
    student = _vox([-math.log(999.0), 0.0], 2)
    labels = torch.zeros(1, 1, dtype=torch.long)
    expected = -(0.75 * math.log(0.005) + 0.25 * math.log(0.999))
    assert regularized_kd(student, teacher, labels, 1.0).item() == pytest.approx(expected, abs=1e-5)
    # T=2 (no T² factor): p_t = (√3/(1+√3), 1/(1+√3)), p_s = (1/(1+√999), √999/(1+√999)),
    # p_s,0 ≈ 0.031 > 0.005 so nothing is clipped.
    pt = [math.sqrt(3) / (1 + math.sqrt(3)), 1 / (1 + math.sqrt(3))]
    ps = [1 / (1 + math.sqrt(999)), math.sqrt(999) / (1 + math.sqrt(999))]
    expected_t2 = -sum(a * math.log(b) for a, b in zip(pt, ps, strict=True))
    assert regularized_kd(student, teacher, labels, 2.0).item() == pytest.approx(expected_t2,
                                                                              abs=1e-5)


def test_regularized_kd_weights_carry_no_gradient() -> None:
    # Two weighted voxels (v0 and v3 of the golden test). With r constant,
    # dL/dz_s,i = r_i / Σr · (p_s,i − p_t,i) / T; any gradient through r would change this.
    ln3 = math.log(3.0)
    teacher = _vox([ln3, 0, ln3, 0], 2)
    student = _vox([0, 0, 0, ln3], 2).requires_grad_(True)
    regularized_kd(student, teacher, torch.zeros(1, 2, dtype=torch.long), 1.0).backward()
    r = torch.tensor([math.log(1.5), ln3])
    p_s = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    p_t = torch.tensor([[0.75, 0.25], [0.75, 0.25]])
    expected = (r / r.sum()).unsqueeze(1) * (p_s - p_t)  # (voxel, K)
    torch.testing.assert_close(student.grad[0].T, expected, atol=1e-6, rtol=0)


def test_regularized_kd_teacher_wrong_everywhere_is_exactly_zero() -> None:
    gen = torch.Generator().manual_seed(4)
    teacher = torch.randn(2, 3, 4, 4, generator=gen)
    labels = (teacher.argmax(dim=1) + 1).remainder(3)  # never the teacher's prediction
    student = torch.randn(2, 3, 4, 4, generator=gen).requires_grad_(True)
    loss = regularized_kd(student, teacher, labels, 10.0)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(student.grad).all()


@settings(max_examples=40, deadline=None)
@given(s=st.lists(grid_logit, min_size=9, max_size=9), t=st.lists(grid_logit, min_size=9,
       max_size=9), labels=st.lists(st.integers(0, 2), min_size=3, max_size=3),
       shift_s=st.lists(grid_shift, min_size=3, max_size=3),
       shift_t=st.lists(grid_shift, min_size=3, max_size=3), temp=st.floats(0.5, 10))
def test_regularized_kd_properties(s: list[float], t: list[float], labels: list[int],
                                   shift_s: list[float], shift_t: list[float],
                                   temp: float) -> None:
    zs, zt, y = _vox(s, 3), _vox(t, 3), torch.tensor([labels])
    value = regularized_kd(zs, zt, y, temp).item()
    assert value >= 0.0
    # student == teacher: every weight is max(0, 0) = 0.
    assert regularized_kd(zt, zt, y, temp).item() == 0.0
    shifted_s = zs + torch.tensor(shift_s).view(1, 1, 3)
    shifted_t = zt + torch.tensor(shift_t).view(1, 1, 3)
    assert regularized_kd(shifted_s, shifted_t, y, temp).item() == pytest.approx(value, abs=1e-3)


def test_regularized_kd_extremes_detached_teacher_and_errors() -> None:
    student = _extreme_logits((2, 3, 3, 3), 5).requires_grad_(True)
    teacher = _extreme_logits((2, 3, 3, 3), 6).requires_grad_(True)
    labels = teacher.detach().argmax(dim=1)  # teacher right everywhere
    loss = regularized_kd(student, teacher.detach(), labels, 10.0)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert torch.isfinite(student.grad).all()
    assert teacher.grad is None
    with pytest.raises(ValueError, match=r"regularized_kd: student_logits .* differ in shape"):
        regularized_kd(student, teacher[:1], labels, 1.0)
    with pytest.raises(ValueError, match="regularized_kd: labels has shape"):
        regularized_kd(student, teacher, labels[:, :2], 1.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        regularized_kd(student, teacher, labels, -1.0)


# =============================================================================================
# contrastive_kd (PMKL)
# =============================================================================================


def test_contrastive_kd_golden() -> None:
    # Inputs are normalised inside: student (3,0),(0,5) -> (1,0),(0,1); teacher (1,0),(−2,0)
    # -> (1,0),(−1,0). Positives: d00 = 0, d11 = |(0,1)−(−1,0)| = √2 -> d² = 0 + 2.
    # Negatives: d01 = |(1,0)−(−1,0)| = 2, d10 = |(0,1)−(1,0)| = √2.
    # m=1: both negatives beyond the margin -> L = (0 + 2 + 0 + 0) / 4 = 1/2.
    # m=2: negatives (2−2)² = 0 and (2−√2)² = 6 − 4√2 -> L = (2 + 6 − 4√2) / 4 = 2 − √2.
    student = torch.tensor([[3.0, 0.0], [0.0, 5.0]])
    teacher = torch.tensor([[1.0, 0.0], [-2.0, 0.0]])
    assert contrastive_kd(student, teacher, 1.0).item() == pytest.approx(0.5, abs=1e-6)
    assert contrastive_kd(student, teacher, 2.0).item() == pytest.approx(2 - math.sqrt(2),
                                                                         abs=1e-6)


embedding = st.lists(st.floats(-10, 10), min_size=3, max_size=3).filter(
    lambda v: math.hypot(*v) > 1e-2)


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(embedding, min_size=2, max_size=4), other=st.lists(embedding, min_size=4,
       max_size=4), margin=st.floats(0.0, 3.0))
def test_contrastive_kd_properties(rows: list[list[float]], other: list[list[float]],
                                   margin: float) -> None:
    e = torch.tensor(rows)
    f = torch.tensor(other[: len(rows)])
    assert contrastive_kd(e, f, margin).item() >= 0.0
    # Identical embeddings, margin >= 2 (the largest distance of unit vectors): positives give
    # 0 and every negative is active, so only Σ_{i≠j} (m − d_ij)² / N² remains.
    big = 2.0 + margin
    u = torch.nn.functional.normalize(e.double(), dim=1)
    d = torch.cdist(u, u)
    off = ~torch.eye(len(rows), dtype=torch.bool)
    expected = ((big - d[off]) ** 2).sum().item() / len(rows) ** 2
    assert contrastive_kd(e, e, big).item() == pytest.approx(expected, abs=1e-4)


def test_contrastive_kd_gradients_and_errors() -> None:
    # A negative pair at distance exactly 0 (student 0 == teacher 1) still has finite grads.
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 1.0], [1.0, 0.0]], requires_grad=True)
    loss = contrastive_kd(student, teacher.detach(), 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    assert teacher.grad is None
    with pytest.raises(ValueError, match="contrastive_kd: student_emb must be"):
        contrastive_kd(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1), 1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        contrastive_kd(torch.zeros(2, 3), torch.zeros(3, 3), 1.0)
    with pytest.raises(ValueError, match="margin must be >= 0"):
        contrastive_kd(student, teacher, -1.0)


# =============================================================================================
# barlow_twins (Choi et al., via MONAI)
# =============================================================================================


def test_barlow_twins_golden() -> None:
    # N=2, D=2, both columns (0, 2) in both inputs. MONAI standardises with the unbiased std
    # √2: (−1/√2, 1/√2) per column, so every C_kl = (1/2)(1/2 + 1/2) = 1/2 (up to the 1e-6).
    # L = Σ_k (1 − 1/2)² + λ Σ_{k≠l} (1/2)² = 2/4 + 0.1 · 2/4 = 0.55 for λ = 0.1.
    # (A biased-std standardisation would give C = 1 and L = 0.1 · 2 = 0.2.)
    z = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    assert barlow_twins(z, z, 0.1).item() == pytest.approx(0.55, abs=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 8), dim=st.integers(1, 6),
       lambd=st.floats(0.0, 1.0))
def test_barlow_twins_equals_monai(seed: int, n: int, dim: int, lambd: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    za = torch.randn(n, dim, generator=gen)
    zb = torch.randn(n, dim, generator=gen)
    value = barlow_twins(za, zb, lambd)
    reference = BarlowTwinsLoss(lambd=lambd)(za, zb)
    assert value.item() == reference.item()
    assert value.item() >= 0.0
    assert barlow_twins(zb, za, lambd).item() == pytest.approx(value.item(), rel=1e-5, abs=1e-6)


def test_barlow_twins_gradients_and_errors() -> None:
    za = torch.randn(4, 3, requires_grad=True)
    zb = torch.randn(4, 3, requires_grad=True)
    barlow_twins(za, zb.detach(), 5e-3).backward()
    assert torch.isfinite(za.grad).all() and zb.grad is None
    with pytest.raises(ValueError, match="barlow_twins: z_a must be"):
        barlow_twins(torch.zeros(4, 3, 1), torch.zeros(4, 3, 1), 5e-3)
    with pytest.raises(ValueError, match="differ in shape"):
        barlow_twins(torch.zeros(4, 3), torch.zeros(4, 2), 5e-3)
    with pytest.raises(ValueError, match="needs N >= 2"):
        barlow_twins(torch.zeros(1, 3), torch.zeros(1, 3), 5e-3)
