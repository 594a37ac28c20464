"""Backbone factory and named feature taps."""

from __future__ import annotations

import pytest
import torch

from kdseg.config import ModelConfig
from kdseg.models.factory import FeatureTaps, available_taps, build_network, forward_with_taps


def test_shapes_and_taps() -> None:
    net = build_network(ModelConfig(filters=(4, 8, 16)), in_channels=2, num_classes=4).eval()
    x = torch.randn(1, 2, 16, 16, 16)
    out = forward_with_taps(net, x, ["bottleneck", "decoder_last", "decoder_0"])
    assert out.logits.shape == (1, 4, 16, 16, 16)
    assert out.features["bottleneck"].shape == (1, 16, 4, 4, 4)
    assert out.features["decoder_0"].shape == (1, 8, 8, 8, 8)
    assert out.features["decoder_last"].shape == (1, 4, 16, 16, 16)
    assert available_taps(net) == ["bottleneck", "decoder_0", "decoder_1", "decoder_last"]


def test_hooks_are_removed_after_use() -> None:
    net = build_network(ModelConfig(filters=(4, 8, 8)), in_channels=1, num_classes=4)
    with FeatureTaps(net, ["bottleneck"]) as taps:
        net(torch.randn(1, 1, 8, 8, 8))
    assert "bottleneck" in taps.features
    assert not net.bottleneck._forward_hooks


def test_unknown_tap_is_an_error() -> None:
    net = build_network(ModelConfig(filters=(4, 8, 8)), in_channels=1, num_classes=4)
    with pytest.raises(ValueError, match="unknown feature tap"):
        forward_with_taps(net, torch.randn(1, 1, 8, 8, 8), ["encoder_9"])


def test_too_shallow_network_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 3 levels"):
        build_network(ModelConfig(filters=(4, 8)), in_channels=1, num_classes=4)


def test_instance_norm_is_group_norm_with_one_group_per_channel() -> None:
    """Same maths as InstanceNorm3d(affine=True), learnable affine included."""
    from torch import nn

    net = build_network(ModelConfig(filters=(4, 8, 16)), 2, 4)
    assert not any(isinstance(m, nn.InstanceNorm3d) for m in net.modules())
    norm = next(m for m in net.modules() if isinstance(m, nn.GroupNorm))
    assert norm.num_groups == norm.num_channels and norm.affine
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(2, norm.num_channels, 5, 6, 7) * 3 + 1
    reference = nn.InstanceNorm3d(norm.num_channels, eps=norm.eps, affine=True)
    reference.load_state_dict(norm.state_dict())
    torch.testing.assert_close(norm(x), reference(x), atol=1e-5, rtol=1e-5)


def test_to_device_uses_channels_last_on_cpu() -> None:
    from kdseg.models.factory import to_device

    net = to_device(build_network(ModelConfig(filters=(4, 8, 16)), 2, 4), torch.device("cpu"))
    weight = net.get_submodule("input_block.conv1.conv").weight
    assert weight.is_contiguous(memory_format=torch.channels_last_3d)
    x = torch.randn(1, 2, 16, 16, 16)  # a contiguous input works too
    assert net(x).shape == (1, 4, 16, 16, 16)
