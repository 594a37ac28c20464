"""Build the shared backbone and capture named intermediate features with forward hooks.

Every network in a benchmark (teacher and students) is the same MONAI ``DynUNet`` (the
nnU-Net architecture: two conv-norm-LeakyReLU layers per level, stride-2 downsampling,
transposed-conv upsampling); only ``in_channels`` differs. Distillation methods need features
from inside the network (the bottleneck for KD-Net's latent term and Barlow Twins, the last
decoder stage for PMKL), so the factory exposes them by name through forward hooks instead of
forking the MONAI forward pass.

Tap names (``available_taps``):

* ``bottleneck``: deepest encoder block output, ``(B, filters[-1], D/2^L, H/2^L, W/2^L)``
* ``decoder_<i>``: output of decoder stage ``i`` (0 = deepest), ``decoder_last`` = the last
  (full-resolution) stage ``(B, filters[0], D, H, W)``
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType

import torch
from monai.networks.nets import DynUNet
from torch import nn

from kdseg.config import ModelConfig


@dataclass
class NetOutput:
    """A network's output for one batch.

    Attributes:
        logits: ``(B, K, D, H, W)`` pre-softmax class scores.
        features: tap name -> ``(B, C, d, h, w)`` intermediate feature map.
    """

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


def build_network(model: ModelConfig, in_channels: int, num_classes: int) -> DynUNet:
    """A ``DynUNet`` with ``len(model.filters)`` levels; input ``(B, in_channels, D, H, W)``.

    Spatial sizes must be divisible by ``2 ** (len(filters) - 1)``. Instance normalisation
    (nnU-Net's) is implemented as ``GroupNorm(C, C)`` (same maths, faster; see below).
    """
    levels = len(model.filters)
    if levels < 3:  # MONAI's DynUNet needs an input block, >= 1 downsampling and a bottleneck
        raise ValueError(f"model.filters needs at least 3 levels, got {list(model.filters)}")
    net = DynUNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=num_classes,
        kernel_size=[model.kernel_size] * levels,
        strides=[1] + [2] * (levels - 1),
        upsample_kernel_size=[2] * (levels - 1),
        filters=list(model.filters),
        dropout=model.dropout or None,
        # nnU-Net's (and DynUNet's default) instance norm has a learnable affine; MONAI's
        # plain "instance" would drop it, and stream-specific norms (ummkd) would be empty.
        norm_name=("instance", {"affine": True}) if model.norm == "instance" else model.norm,
        deep_supervision=False,
        res_block=False,
    )
    if model.norm == "instance":
        _instance_norm_to_group_norm(net)
    return net


def _instance_norm_to_group_norm(net: nn.Module) -> None:
    """Replace each ``InstanceNorm3d(C, affine=True)`` by ``GroupNorm(C, C)``: the same maths
    (one group per channel, biased variance, ``eps`` inside the square root, per-channel affine;
    identical parameter names), but PyTorch's GroupNorm kernel works on channels-last tensors
    without the copies InstanceNorm's batch-norm reshaping makes. Measured once on the
    project's 2-core CPU machine (one thread, 32³ patch, batch 2, 4 levels): teacher forward
    0.062 s -> 0.036 s, student training step 0.226 s -> 0.164 s together with channels-last
    (:func:`to_device`); ``kdseg bench train_step`` compares the result with plain MONAI."""
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.InstanceNorm3d):
                group = nn.GroupNorm(child.num_features, child.num_features, eps=child.eps,
                                     affine=child.affine)
                setattr(module, name, group)


MEMORY_FORMATS: tuple[str, ...] = ("auto", "channels_last", "contiguous")
"""Values of ``train.memory_format``."""


def resolve_memory_format(name: str, device: torch.device) -> torch.memory_format:
    """``train.memory_format`` as a torch memory format for ``device``.

    ``auto``: channels-last-3d on the CPU, where oneDNN's 3D convolutions run much faster in
    it (student step 0.226 s -> 0.164 s together with GroupNorm, see
    :func:`_instance_norm_to_group_norm`); contiguous on CUDA until a GPU measurement says
    otherwise (``kdseg bench --device cuda`` times both formats).
    """
    if name not in MEMORY_FORMATS:
        raise ValueError(f"train.memory_format must be one of {list(MEMORY_FORMATS)}, "
                         f"got {name!r}")
    if name == "channels_last" or (name == "auto" and device.type == "cpu"):
        return torch.channels_last_3d
    return torch.contiguous_format


def to_device(net: nn.Module, device: torch.device, memory_format: str = "auto") -> nn.Module:
    """Move ``net`` to ``device`` in ``memory_format`` (:func:`resolve_memory_format`).

    Only the weights change layout: inputs may stay contiguous, the first convolution's output
    follows the weights' format.
    """
    return net.to(device).to(memory_format=resolve_memory_format(memory_format, device))


def tap_modules(net: DynUNet) -> dict[str, nn.Module]:
    """Tap name -> module whose forward output is that feature."""
    taps: dict[str, nn.Module] = {"bottleneck": net.bottleneck}
    for i, block in enumerate(net.upsamples):
        taps[f"decoder_{i}"] = block
    taps["decoder_last"] = net.upsamples[-1]
    return taps


def tap_channels(model: ModelConfig) -> dict[str, int]:
    """Tap name -> channels of that feature for networks built by :func:`build_network`."""
    filters = list(model.filters)
    channels = {"bottleneck": filters[-1]}
    decoder = filters[-2::-1]  # decoder stage i (0 = deepest) outputs filters[-2 - i] channels
    channels.update({f"decoder_{i}": c for i, c in enumerate(decoder)})
    channels["decoder_last"] = filters[0]
    return channels


def available_taps(net: DynUNet) -> list[str]:
    return list(tap_modules(net))


class FeatureTaps:
    """Context manager recording the outputs of named modules during forward passes.

    Example::

        with FeatureTaps(net, ["bottleneck"]) as taps:
            logits = net(x)
        taps.features["bottleneck"]  # (B, C, d, h, w)
    """

    def __init__(self, net: DynUNet, names: Iterable[str]) -> None:
        modules = tap_modules(net)
        self.names = list(dict.fromkeys(names))
        unknown = sorted(set(self.names) - set(modules))
        if unknown:
            raise ValueError(f"unknown feature tap(s) {unknown}; available: {list(modules)}")
        self._modules = {name: modules[name] for name in self.names}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.features: dict[str, torch.Tensor] = {}

    def __enter__(self) -> FeatureTaps:
        for name, module in self._modules.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name: str):
        def record(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            self.features[name] = output

        return record

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class TappedNetwork(nn.Module):
    """``net`` whose forward returns ``(logits, {tap: feature})``, for the training step.

    The hooks are registered once, for the wrapper's lifetime (not per call as in
    :class:`FeatureTaps`), so ``torch.compile`` traces them into one graph: hooks added or
    removed after compiling would not be seen by the compiled code. ``net``'s parameters and
    ``state_dict`` are untouched (the wrapper owns no state of its own).

    Args:
        net: a network built by :func:`build_network`.
        taps: tap names (:func:`available_taps`).

    Input ``(B, C, D, H, W)``; output ``(B, K, D, H, W)`` logits and the features (shapes in
    the module docstring).
    """

    def __init__(self, net: DynUNet, taps: Iterable[str]) -> None:
        super().__init__()
        self.net = net
        self.taps = list(dict.fromkeys(taps))
        modules = tap_modules(net)
        unknown = sorted(set(self.taps) - set(modules))
        if unknown:
            raise ValueError(f"unknown feature tap(s) {unknown}; available: {list(modules)}")
        self._features: dict[str, torch.Tensor] = {}
        self._handles = [modules[name].register_forward_hook(self._recorder(name))
                         for name in self.taps]

    def _recorder(self, name: str):
        def record(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            self._features[name] = output

        return record

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.net(x)
        features = {name: self._features.pop(name) for name in self.taps}
        return logits, features

    def remove(self) -> None:
        """Detach the hooks from ``net``."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def forward_with_taps(net: DynUNet, x: torch.Tensor, taps: Iterable[str] = ()) -> NetOutput:
    """Run ``net`` on ``x`` ``(B, C, D, H, W)`` and return logits plus the requested features."""
    taps = list(taps)
    if not taps:
        return NetOutput(net(x))
    with FeatureTaps(net, taps) as recorder:
        logits = net(x)
    return NetOutput(logits, dict(recorder.features))
