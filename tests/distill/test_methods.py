"""Method registry and the distiller contract, for every registered method."""

from __future__ import annotations

import pytest
import torch

from kdseg.config import ModelConfig
from kdseg.distill.options import METHOD_OPTIONS
from kdseg.distill.registry import METHODS, build_distiller
from kdseg.models.factory import build_network, forward_with_taps

MODEL = ModelConfig(filters=(4, 8, 16))
NUM_CLASSES = 4


def _outputs(distiller, batch: int = 2, seed: int = 0):
    """Student and (frozen) teacher outputs with the taps the method asks for."""
    torch.manual_seed(seed)
    student = build_network(MODEL, 1, NUM_CLASSES)
    teacher = build_network(MODEL, 4, NUM_CLASSES).eval().requires_grad_(False)
    x = torch.randn(batch, 4, 16, 16, 16)
    target = torch.randint(0, NUM_CLASSES, (batch, 1, 16, 16, 16))
    s_out = forward_with_taps(student, x[:, :1], distiller.student_taps)
    with torch.no_grad():
        t_out = forward_with_taps(teacher, x, distiller.teacher_taps)
    return student, teacher, s_out, t_out, target


def test_registry_matches_options() -> None:
    assert set(METHODS) == set(METHOD_OPTIONS) == {"baseline", "logit_kd", "kdnet", "pmkl",
                                                   "ummkd", "barlow_kd"}
    teachers = {kind: cls.teacher for kind, cls in METHOD_OPTIONS.items()}
    assert teachers == {"baseline": "none", "logit_kd": "frozen", "kdnet": "frozen",
                        "pmkl": "frozen", "ummkd": "joint", "barlow_kd": "joint"}


@pytest.mark.parametrize("kind", ["logit_kd", "kdnet", "pmkl"])
def test_teacher_methods_train_student_and_heads_only(kind: str) -> None:
    distiller = build_distiller({"name": kind, "kind": kind}, MODEL, NUM_CLASSES)
    assert distiller.needs_teacher
    student, teacher, s_out, t_out, target = _outputs(distiller)
    terms = distiller(s_out, t_out, target)
    assert terms and all(t.ndim == 0 and torch.isfinite(t) for t in terms.values())
    sum(terms.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())  # frozen teacher
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    for p in distiller.parameters():  # projection heads (pmkl) learn too
        assert p.grad is not None


def test_logit_kd_zero_when_student_equals_teacher() -> None:
    kd = build_distiller({"name": "logit_kd", "kind": "logit_kd", "temperature": 3.0,
                          "weight": 2.0}, MODEL, NUM_CLASSES)
    from kdseg.models.factory import NetOutput

    logits = torch.randn(2, 4, 4, 4, 4)
    same = kd(NetOutput(logits), NetOutput(logits.clone()), torch.zeros(2, 1, 4, 4, 4).long())
    assert set(same) == {"kd_logit"} and same["kd_logit"].item() < 1e-6


def test_kdnet_terms_and_latent_ablation() -> None:
    full = build_distiller({"name": "kdnet", "kind": "kdnet"}, MODEL, NUM_CLASSES)
    ablated = build_distiller({"name": "kdnet_nolat", "kind": "kdnet", "latent_weight": 0.0},
                              MODEL, NUM_CLASSES)
    _, _, s_out, t_out, target = _outputs(full)
    assert set(full(s_out, t_out, target)) == {"kd_logit", "kd_latent"}
    assert set(ablated(s_out, t_out, target)) == {"kd_logit"}
    assert full.student_taps == ("bottleneck",)


def test_pmkl_terms_and_heads() -> None:
    pmkl = build_distiller({"name": "pmkl", "kind": "pmkl", "embedding_dim": 8}, MODEL,
                           NUM_CLASSES)
    _, _, s_out, t_out, target = _outputs(pmkl)
    terms = pmkl(s_out, t_out, target)
    assert set(terms) == {"kd_pixel", "kd_contrast"}
    z = pmkl.student_head(s_out.features["decoder_last"])
    assert z.shape == (2, 8)


def test_baseline_adds_nothing() -> None:
    base = build_distiller({"name": "baseline", "kind": "baseline"}, MODEL, NUM_CLASSES)
    assert not base.needs_teacher
    _, _, s_out, _, target = _outputs(base)
    assert base(s_out, None, target) == {}
