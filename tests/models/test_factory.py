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
