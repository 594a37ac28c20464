"""Single-stage methods: ummkd (shared kernels, per-stream norms) and barlow_kd (joint paths)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdseg.config import ModelConfig
from kdseg.distill.barlow import downsample_labels, nnunet_ds_weights, voxels_as_samples
from kdseg.distill.registry import build_distiller
from kdseg.distill.ummkd import STEM, share_convolutions
from kdseg.models.factory import build_network, forward_with_taps

K = 4
MODEL3 = ModelConfig(filters=(4, 8, 16))
MODEL4 = ModelConfig(filters=(4, 8, 16, 32))
STUDENT_CHANNELS = [1, 3]  # t1ce + flair out of (t1, t1ce, t2, flair)


def _ummkd(**options):
    return build_distiller({"name": "ummkd", "kind": "ummkd", **options}, MODEL3, K)


def _joint_pair(distiller, model: ModelConfig, n_student: int, norm: str = "instance"):
    model = ModelConfig(filters=model.filters, norm=norm)
    torch.manual_seed(0)
    student = build_network(model, distiller.student_in_channels(n_student, 4), K)
    teacher = build_network(model, 4, K)
    distiller.bind(student, teacher)
    return student, teacher


def _norm_params(net: nn.Module) -> list[nn.Parameter]:
    norms = nn.GroupNorm | nn.modules.instancenorm._InstanceNorm | nn.modules.batchnorm._BatchNorm
    return [p for m in net.modules() if isinstance(m, norms) for p in m.parameters()]


# ------------------------------------------------------------------------------------ ummkd
@pytest.mark.parametrize("first_conv", ["zero_fill", "separate"])
def test_ummkd_shares_kernels_not_norms(first_conv: str) -> None:
    distiller = _ummkd(first_conv=first_conv)
    student, teacher = _joint_pair(distiller, MODEL3, len(STUDENT_CHANNELS))
    teacher_params = {id(p) for p in teacher.parameters()}
    convs = {n: m for n, m in student.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}
    for name, conv in convs.items():
        shared = id(conv.weight) in teacher_params
        assert shared == (name != STEM or first_conv == "zero_fill"), name
    norms = _norm_params(student)
    assert norms and not any(id(p) in teacher_params for p in norms)  # stream-specific affine


def test_ummkd_batch_norm_keeps_running_statistics_per_stream() -> None:
    distiller = _ummkd()
    student, teacher = _joint_pair(distiller, MODEL3, 2, norm="batch")
    x = torch.randn(2, 4, 16, 16, 16)
    teacher(x * 3 + 1)
    student(distiller.student_input(x, STUDENT_CHANNELS))
    s_bn = next(m for m in student.modules() if isinstance(m, nn.BatchNorm3d))
    t_bn = next(m for m in teacher.modules() if isinstance(m, nn.BatchNorm3d))
    assert not torch.allclose(s_bn.running_mean, t_bn.running_mean)


def test_ummkd_zero_fill_export_equals_the_student_stream() -> None:
    """The exported plain student on its 2 channels == the student stream on zero-filled 4."""
    distiller = _ummkd()
    student, _teacher = _joint_pair(distiller, MODEL3, len(STUDENT_CHANNELS))
    with torch.no_grad():  # make the per-stream affine non-trivial
        for p in _norm_params(student):
            p.add_(torch.randn_like(p) * 0.3)
    student.eval()
    x = torch.randn(1, 4, 16, 16, 16)
    plain = build_network(MODEL3, len(STUDENT_CHANNELS), K).eval()
    plain.load_state_dict(distiller.export_student(student.state_dict(), STUDENT_CHANNELS))
    zero_filled = distiller.student_input(x, STUDENT_CHANNELS)
    assert torch.equal(zero_filled[:, [0, 2]], torch.zeros_like(zero_filled[:, [0, 2]]))
    with torch.no_grad():
        torch.testing.assert_close(plain(x[:, STUDENT_CHANNELS]), student(zero_filled),
                                   atol=1e-5, rtol=1e-5)


def test_ummkd_loss_reaches_both_streams_and_shared_kernels_get_both_gradients() -> None:
    distiller = _ummkd(kd_weight=1.0)
    student, teacher = _joint_pair(distiller, MODEL3, len(STUDENT_CHANNELS))
    x = torch.randn(2, 4, 16, 16, 16)
    y = torch.randint(0, K, (2, 1, 16, 16, 16))
    t_out = forward_with_taps(teacher, x)
    s_out = forward_with_taps(student, distiller.student_input(x, STUDENT_CHANNELS))
    terms = distiller(s_out, t_out, y)
    assert set(terms) == {"kd_prototype"} and terms["kd_prototype"] > 0
    terms["kd_prototype"].backward()
    assert all(p.grad is not None for p in _norm_params(student))
    assert all(p.grad is not None for p in _norm_params(teacher))


def test_ummkd_unpaired_uses_each_streams_own_labels() -> None:
    distiller = _ummkd(unpaired=True)
    assert distiller.unpaired
    logits = torch.randn(2, K, 8, 8, 8)
    y = torch.randint(0, K, (2, 1, 8, 8, 8))
    from kdseg.models.factory import NetOutput

    same = distiller(NetOutput(logits), NetOutput(logits.clone()), y, y)["kd_prototype"]
    other = distiller(NetOutput(logits), NetOutput(logits.clone()), y, (y + 1) % K)
    assert same.item() < 1e-6 < other["kd_prototype"].item()


def test_share_convolutions_refuses_different_architectures() -> None:
    with pytest.raises(ValueError, match="convolution"):
        share_convolutions(build_network(MODEL3, 4, K), build_network(MODEL4, 4, K))


# ----------------------------------------------------------------------------------- barlow
def test_nnunet_ds_weights_golden() -> None:
    assert nnunet_ds_weights(1) == [1.0]
    assert nnunet_ds_weights(3) == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert nnunet_ds_weights(5) == pytest.approx([1 / 1.875, 0.5 / 1.875, 0.25 / 1.875,
                                                  0.125 / 1.875, 0.0])
    with pytest.raises(ValueError):
        nnunet_ds_weights(0)


def test_downsample_labels_is_nearest_neighbour() -> None:
    y = torch.arange(64).reshape(1, 1, 4, 4, 4) % K
    down = downsample_labels(y, torch.Size([2, 2, 2]))
    assert down.shape == (1, 2, 2, 2)
    # nearest-exact samples at pixel centres: output i reads input floor((i + 0.5) * 2) = 2i + 1
    assert torch.equal(down[0], y[0, 0, 1::2, 1::2, 1::2])


def test_voxels_as_samples_layout() -> None:
    f = torch.arange(2 * 3 * 2 * 1 * 1, dtype=torch.float).reshape(2, 3, 2, 1, 1)
    z = voxels_as_samples(f)
    assert z.shape == (4, 3)
    assert torch.equal(z[1], f[0, :, 1, 0, 0]) and torch.equal(z[2], f[1, :, 0, 0, 0])


def test_barlow_deep_supervision_levels_follow_network_depth() -> None:
    shallow = build_distiller({"name": "b", "kind": "barlow_kd"}, MODEL3, K)
    deep = build_distiller({"name": "b", "kind": "barlow_kd"}, MODEL4, K)
    assert shallow.ds_levels == []  # 2 outputs: the lowest is weighted 0
    assert deep.ds_levels == [("decoder_1", 0.5)]  # 1/2 resolution, 2^-1 relative to main
    assert deep.student_taps == ("bottleneck", "decoder_1")


def _barlow_outputs(**options):
    distiller = build_distiller({"name": "b", "kind": "barlow_kd", **options}, MODEL4, K)
    student, teacher = _joint_pair(distiller, MODEL4, 2)
    x = torch.randn(2, 4, 16, 16, 16)
    y = torch.randint(0, K, (2, 1, 16, 16, 16))
    t_out = forward_with_taps(teacher, x, distiller.teacher_taps)
    s_out = forward_with_taps(student, x[:, STUDENT_CHANNELS], distiller.student_taps)
    return distiller, student, teacher, distiller(s_out, t_out, y)


@pytest.mark.parametrize("bt_to_teacher", [False, True])
def test_barlow_gradient_into_teacher_only_when_asked(bt_to_teacher: bool) -> None:
    distiller, student, teacher, terms = _barlow_outputs(bt_to_teacher=bt_to_teacher)
    assert set(terms) == {"ds_student", "ds_teacher", "kd_barlow"}
    assert all(torch.isfinite(t) and t >= 0 for t in terms.values())
    terms["kd_barlow"].backward()
    grads = [p.grad for p in teacher.bottleneck.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads) == bt_to_teacher
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in student.bottleneck.parameters())
    assert all(p.grad is not None for p in distiller.teacher_projector.parameters())


def test_barlow_deep_supervision_trains_both_paths_heads() -> None:
    distiller, _student, teacher, terms = _barlow_outputs()
    (terms["ds_student"] + terms["ds_teacher"]).backward()
    for heads in (distiller.student_heads, distiller.teacher_heads):
        assert all(p.grad is not None for p in heads.parameters())
    assert any(p.grad is not None for p in teacher.parameters())


def test_barlow_pixel_kd_option_adds_a_term_without_teacher_gradient() -> None:
    _, _, teacher, terms = _barlow_outputs(pixel_kd_weight=1.0)
    assert set(terms) == {"ds_student", "ds_teacher", "kd_barlow", "kd_pixel"}
    terms["kd_pixel"].backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_barlow_pixel_kd_without_deep_supervision_uses_full_resolution_only() -> None:
    """With ds_weight 0 the teacher's low-resolution heads are never trained: not a target."""
    from kdseg.models.factory import NetOutput

    distiller = build_distiller({"name": "b", "kind": "barlow_kd", "pixel_kd_weight": 2.0,
                                 "ds_weight": 0.0}, MODEL4, K)
    torch.manual_seed(0)

    def out() -> NetOutput:
        return NetOutput(torch.randn(2, K, 8, 8, 8),
                         {"bottleneck": torch.randn(2, 32, 1, 1, 1).expand(2, 32, 2, 2, 2) +
                          torch.randn(2, 32, 2, 2, 2), "decoder_1": torch.randn(2, 8, 4, 4, 4)})

    s, t = out(), out()
    terms = distiller(s, t, torch.randint(0, K, (2, 1, 8, 8, 8)))
    assert set(terms) == {"kd_barlow", "kd_pixel"}
    expected = -(torch.softmax(t.logits, 1) * torch.log_softmax(s.logits, 1)).sum(1).mean()
    torch.testing.assert_close(terms["kd_pixel"], 2.0 * expected)


@pytest.mark.parametrize("kind, options, key", [
    ("ummkd", {"first_conv": "replicate"}, "methods.m.first_conv"),
    ("ummkd", {"temperature": 0}, "methods.m.temperature"),
    ("ummkd", {"unpaired": "yes"}, "methods.m.unpaired"),
    ("barlow_kd", {"projector_dim": 0}, "methods.m.projector_dim"),
    ("barlow_kd", {"bt_weight": -1}, "methods.m.bt_weight"),
    ("barlow_kd", {"bt_lamda": 0.01}, "unknown option(s) ['bt_lamda']"),
])
def test_bad_joint_method_options_name_the_key(kind: str, options: dict, key: str) -> None:
    from kdseg.distill.options import OptionsError, parse_method

    with pytest.raises(OptionsError) as err:
        parse_method("m", {"kind": kind, **options})
    assert key in str(err.value)
