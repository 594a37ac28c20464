"""The GPU-path settings of the training step (memory format, torch.compile, cuDNN autotuning,
bf16), exercised on the CPU; the CUDA-only checks are marked ``gpu``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdseg.config import write_run_config
from kdseg.training.loop import Trainer, train_run

KDNET = {"name": "kdnet", "kind": "kdnet"}  # logit and latent (bottleneck tap) terms


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory, tiny_data: dict, make_run_config) -> Path:
    run_dir = tmp_path_factory.mktemp("gpu_path_teacher")
    write_run_config(make_run_config(tiny_data, epochs=1, iterations=1),
                     run_dir / "run_config.yaml")
    train_run(run_dir, threads=1)
    return run_dir


def _trainer(tmp_path: Path, tiny_data: dict, make_run_config, teacher: Path,
             **train: object) -> Trainer:
    cfg = make_run_config(tiny_data, stage="student", subset="flair", method=KDNET,
                          teacher_dir=str(teacher), epochs=1, iterations=2)
    cfg["train"].update(train)
    name = "_".join(f"{k}-{v}" for k, v in train.items()) or "default"
    write_run_config(cfg, tmp_path / name / "run_config.yaml")
    return Trainer(tmp_path / name)


def _losses(trainer: Trainer, n: int = 2) -> list[dict[str, float]]:
    stream = iter(torch.utils.data.DataLoader(trainer.data, batch_size=2))
    return [trainer.step(*next(stream)) for _ in range(n)]


def _assert_same_losses(a: list[dict[str, float]], b: list[dict[str, float]]) -> None:
    assert [sorted(x) for x in a] == [sorted(y) for y in b]
    for x, y in zip(a, b, strict=True):
        for key in x:
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-5), key


@pytest.mark.parametrize("fmt, expected", [("auto", torch.channels_last_3d),
                                           ("channels_last", torch.channels_last_3d),
                                           ("contiguous", torch.contiguous_format)])
def test_memory_format_applies_to_student_and_frozen_teacher(
        tmp_path: Path, tiny_data: dict, make_run_config, teacher: Path, fmt: str,
        expected: torch.memory_format) -> None:
    trainer = _trainer(tmp_path, tiny_data, make_run_config, teacher, memory_format=fmt)
    for net in (trainer.net, trainer.teacher):
        weight = net.input_block.conv1.conv.weight  # type: ignore[union-attr]
        assert weight.is_contiguous(memory_format=expected), (fmt, net)
    assert not trainer.teacher.training  # type: ignore[union-attr]


def test_memory_formats_give_the_same_steps(tmp_path: Path, tiny_data: dict, make_run_config,
                                            teacher: Path) -> None:
    last = _losses(_trainer(tmp_path, tiny_data, make_run_config, teacher,
                            memory_format="channels_last"))
    contiguous = _losses(_trainer(tmp_path, tiny_data, make_run_config, teacher,
                                  memory_format="contiguous"))
    _assert_same_losses(last, contiguous)


def test_compiled_step_matches_eager_with_feature_taps(
        tmp_path: Path, tiny_data: dict, make_run_config, teacher: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """train.compile traces the tapped forward passes (hooks included) through TorchDynamo and
    AOTAutograd; the ``aot_eager`` backend skips only the C++ code generation, which the slow
    test below runs."""
    real_compile = torch.compile
    calls = []

    def compile_aot_eager(model: torch.nn.Module, **kwargs: object) -> object:
        calls.append(kwargs)
        return real_compile(model, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch, "compile", compile_aot_eager)
    torch._dynamo.reset()
    eager = _losses(_trainer(tmp_path, tiny_data, make_run_config, teacher))
    compiled_trainer = _trainer(tmp_path, tiny_data, make_run_config, teacher, compile=True)
    assert len(calls) == 2  # student and frozen teacher, each with its taps
    compiled = _losses(compiled_trainer)
    _assert_same_losses(eager, compiled)
    assert {"kd_logit", "kd_latent"} <= set(compiled[0])  # the bottleneck tap reached the loss
    state = compiled_trainer.student_state()  # plain names: no "_orig_mod." from compiling
    assert not any("_orig_mod" in key for key in state)


@pytest.mark.slow
def test_compiled_step_with_inductor_matches_eager(tmp_path: Path, tiny_data: dict,
                                                   make_run_config, teacher: Path) -> None:
    """The real backend (C++ code generation on the CPU: 22 s here with a warm compile
    cache, over a minute per network with a cold one)."""
    torch._dynamo.reset()
    eager = _losses(_trainer(tmp_path, tiny_data, make_run_config, teacher), n=1)
    compiled = _losses(_trainer(tmp_path, tiny_data, make_run_config, teacher, compile=True), n=1)
    _assert_same_losses(eager, compiled)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_step_uses_bf16_autocast_and_cudnn_autotuning(
        tmp_path: Path, tiny_data: dict, make_run_config, teacher: Path) -> None:
    trainer = _trainer(tmp_path, tiny_data, make_run_config, teacher, device="cuda",
                       cudnn_benchmark=True)
    assert trainer.amp and torch.backends.cudnn.benchmark
    losses = _losses(trainer)
    assert all(torch.isfinite(torch.tensor(list(x.values()))).all() for x in losses)
    off = _trainer(tmp_path, tiny_data, make_run_config, teacher, device="cuda",
                   cudnn_benchmark=False)
    assert off.amp and not torch.backends.cudnn.benchmark
