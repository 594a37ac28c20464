"""Whole-case prediction: kdseg's sliding-window path gives MONAI's result, and the CUDA-side
helpers (pinned host case, non-blocking copy, cuDNN autotuning) behave; the CUDA-only checks
are marked ``gpu``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from kdseg.config import InferenceConfig, ModelConfig
from kdseg.inference.predict import (
    _cudnn_autotune,
    _host_case,
    _to_device,
    predict_classes,
    predict_logits,
)
from kdseg.models.factory import build_network, to_device

CPU = torch.device("cpu")
ROI = (16, 16, 16)


def _net(in_channels: int = 4, device: torch.device = CPU) -> torch.nn.Module:
    torch.manual_seed(0)
    return to_device(build_network(ModelConfig(filters=(4, 8, 16)), in_channels, 4), device)


def _monai(net: torch.nn.Module, image: torch.Tensor, inference: InferenceConfig) -> torch.Tensor:
    """MONAI's plain call, ``(K, X, Y, Z)``."""
    with torch.no_grad():
        return sliding_window_inference(
            image[None], roi_size=ROI, sw_batch_size=inference.sw_batch_size, predictor=net,
            overlap=inference.overlap, mode=inference.mode)[0]


@pytest.mark.parametrize(("shape", "inference"), [
    ((37, 30, 25), InferenceConfig(overlap=0.25, sw_batch_size=4, mode="gaussian")),
    ((20, 12, 16), InferenceConfig(overlap=0.5, sw_batch_size=3, mode="constant")),  # padded
])
def test_same_result_as_monai(shape: tuple[int, int, int], inference: InferenceConfig) -> None:
    net = _net().eval()
    image = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    ref = _monai(net, image, inference)
    logits = predict_logits(net, image, ROI, inference, CPU)
    assert logits.shape == (4, *shape) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, ref, rtol=0, atol=1e-6)
    classes = predict_classes(net, image, ROI, inference, CPU)
    assert classes.dtype == np.uint8 and classes.shape == shape
    np.testing.assert_array_equal(classes, ref.argmax(dim=0).numpy())


def test_training_mode_is_restored() -> None:
    net = _net(in_channels=1).train()
    predict_classes(net, torch.randn(1, 16, 16, 16), ROI, InferenceConfig(), CPU)
    assert net.training
    assert all(p.grad is None for p in net.parameters())


def test_host_case_selects_channels(tmp_path: Path) -> None:
    """A memory-mapped preprocessed case (as load_preprocessed gives it) -> (C, X, Y, Z)."""
    array = np.random.default_rng(0).standard_normal((4, 5, 6, 7)).astype(np.float32)
    np.save(tmp_path / "image.npy", array)
    image = np.load(tmp_path / "image.npy", mmap_mode="r")
    x = _host_case(image, [3, 1], pin=False)
    assert x.dtype == torch.float32 and x.is_contiguous()
    np.testing.assert_array_equal(x.numpy(), array[[3, 1]])


def test_cpu_transfer_is_free() -> None:
    x = torch.randn(2, 3, 4, 5)
    assert _to_device(x, CPU) is x


@pytest.mark.parametrize("initial", [False, True])
def test_cudnn_autotune_is_scoped(initial: bool) -> None:
    """Benchmark mode only inside the CUDA inference call, restored after it (even on error);
    on the CPU the flag is never touched. (The flag is settable without a GPU.)"""
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = initial
        with _cudnn_autotune(CPU):
            assert torch.backends.cudnn.benchmark is initial
        with pytest.raises(RuntimeError, match="boom"), _cudnn_autotune(torch.device("cuda")):
            assert torch.backends.cudnn.benchmark is True
            raise RuntimeError("boom")
        assert torch.backends.cudnn.benchmark is initial
    finally:
        torch.backends.cudnn.benchmark = before


@pytest.mark.gpu
def test_cuda_path() -> None:
    """Pinned host case -> non-blocking copy -> prediction on CUDA: float32 agrees with MONAI's
    call on the same network (cuDNN kernel choice aside), bf16 autocast within bf16 noise."""
    cuda = torch.device("cuda")
    array = np.random.default_rng(0).standard_normal((4, 40, 36, 30)).astype(np.float32)
    x = _host_case(array, [0, 1, 2, 3], pin=True)
    assert x.is_pinned()
    np.testing.assert_array_equal(x.numpy(), array)
    on_gpu = _to_device(x, cuda)
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), x)
    net = _net(device=cuda).eval()
    inference = InferenceConfig(overlap=0.25, sw_batch_size=4, mode="gaussian")
    ref = _monai(net, on_gpu, inference)
    before = torch.backends.cudnn.benchmark
    classes = predict_classes(net, x, ROI, inference, cuda, amp=False)
    assert torch.backends.cudnn.benchmark == before
    assert classes.shape == (40, 36, 30) and classes.dtype == np.uint8
    assert np.mean(classes != ref.argmax(dim=0).cpu().numpy()) < 1e-3
    bf16 = predict_logits(net, x, ROI, inference, cuda, amp=True)
    assert bf16.dtype == torch.float32 and bf16.device.type == "cuda"
    torch.testing.assert_close(bf16, ref, rtol=0, atol=0.05 * float(ref.abs().max()))
