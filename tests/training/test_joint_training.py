"""Single-stage methods inside the real Trainer: sharing, unpaired wiring, init, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdseg.config import write_run_config
from kdseg.distill.options import options_dict, parse_method
from kdseg.training import checkpoint
from kdseg.training.loop import Trainer, train_run


def _config(tiny_data: dict, make_run_config, name: str, options: dict | None = None,
            norm: str = "instance", epochs: int = 1) -> dict:
    options = {"kind": name, **(options or {})}
    method = {"name": name, **options_dict(*parse_method(name, options))}
    cfg = make_run_config(tiny_data, stage="student", subset="flair+t1ce", method=method,
                          epochs=epochs)
    cfg["model"]["filters"] = [4, 8, 16, 32]
    cfg["model"]["norm"] = norm
    return cfg


def _trainer(tmp_path: Path, cfg: dict, name: str = "run") -> Trainer:
    write_run_config(cfg, tmp_path / name / "run_config.yaml")
    return Trainer(tmp_path / name)


def test_ummkd_trainer_shares_kernels_once_in_the_optimizer(tmp_path: Path, tiny_data: dict,
                                                            make_run_config) -> None:
    trainer = _trainer(tmp_path, _config(tiny_data, make_run_config, "ummkd"))
    s_conv = trainer.net.get_submodule("downsamples.0.conv1.conv")
    t_conv = trainer.teacher.get_submodule("downsamples.0.conv1.conv")
    assert s_conv.weight is t_conv.weight  # still shared after the move to channels-last
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params})
    before = s_conv.weight.detach().clone()
    image, label = next(iter(torch.utils.data.DataLoader(trainer.data, batch_size=2)))
    trainer.step(image, label)
    assert not torch.equal(before, s_conv.weight) and s_conv.weight is t_conv.weight


def test_ummkd_student_starts_from_the_baseline_students_weights(
        tmp_path: Path, tiny_data: dict, make_run_config) -> None:
    baseline = _trainer(tmp_path, _config(tiny_data, make_run_config, "baseline"), "baseline")
    ummkd = _trainer(tmp_path, _config(tiny_data, make_run_config, "ummkd"), "ummkd")
    base_state, ummkd_state = baseline.net.state_dict(), ummkd.net.state_dict()
    for key, value in base_state.items():
        if key.endswith("conv1.conv.weight") and value.shape[1] == 2:  # the stem: 2 vs 4 inputs
            continue
        torch.testing.assert_close(ummkd_state[key], value, msg=key)


def test_unpaired_step_routes_each_batch_to_its_stream(tmp_path: Path, tiny_data: dict,
                                                       make_run_config) -> None:
    trainer = _trainer(tmp_path, _config(tiny_data, make_run_config, "ummkd",
                                         {"unpaired": True}))
    seen: dict[str, torch.Tensor] = {}
    trainer.teacher.register_forward_pre_hook(lambda m, a: seen.__setitem__("teacher_x", a[0]))
    trainer.net.register_forward_pre_hook(lambda m, a: seen.__setitem__("student_x", a[0]))
    forward = trainer.distiller.forward

    def spy(student, teacher, target, teacher_target=None):
        seen["target"], seen["teacher_target"] = target, teacher_target
        return forward(student, teacher, target, teacher_target)

    trainer.distiller.forward = spy
    batch = next(iter(torch.utils.data.DataLoader(trainer.data, batch_size=2)))
    assert len(batch) == 4
    image, label, other_image, other_label = batch
    trainer.step(image, label, other_image, other_label)
    torch.testing.assert_close(seen["teacher_x"], other_image)
    zero_filled = torch.zeros_like(image)
    zero_filled[:, trainer.cfg.input_channels] = image[:, trainer.cfg.input_channels]
    torch.testing.assert_close(seen["student_x"], zero_filled)
    assert torch.equal(seen["target"], label) and torch.equal(seen["teacher_target"], other_label)


@pytest.mark.parametrize("name, options, norm", [("barlow_kd", {}, "instance"),
                                                 ("ummkd", {}, "batch")])
def test_single_stage_resume_is_exact(tmp_path: Path, tiny_data: dict, make_run_config,
                                      name: str, options: dict, norm: str) -> None:
    """Heads, projector BatchNorm statistics, per-stream BN statistics and the teacher path all
    come back from checkpoint_last.pt."""
    cfg = _config(tiny_data, make_run_config, name, options, norm=norm, epochs=2)
    full, interrupted = tmp_path / "full", tmp_path / "interrupted"
    for run_dir in (full, interrupted):
        write_run_config(cfg, run_dir / "run_config.yaml")
    train_run(full, threads=1)
    Trainer(interrupted).fit(until_epoch=1)
    train_run(interrupted, threads=1)
    assert json.loads((interrupted / "run.json").read_text())["resumed_from_epoch"] == 1
    a = checkpoint.load(full / checkpoint.LAST)
    b = checkpoint.load(interrupted / checkpoint.LAST)
    for part in ("model", "teacher_path", "distiller"):
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], msg=f"{part}.{key}")


def test_checkpoint_that_does_not_fit_the_network_is_moved_aside(
        tmp_path: Path, tiny_data: dict, make_run_config) -> None:
    """E.g. written by an older network definition: not loaded, kept, training starts over."""
    run_dir = tmp_path / "run"
    write_run_config(_config(tiny_data, make_run_config, "baseline", epochs=2),
                     run_dir / "run_config.yaml")
    Trainer(run_dir).fit(until_epoch=1)
    state = checkpoint.load(run_dir / checkpoint.LAST)
    state["model"] = {k: v for k, v in state["model"].items() if "norm" not in k}
    checkpoint.save_atomic(state, run_dir / checkpoint.LAST)
    train_run(run_dir, threads=1)
    assert json.loads((run_dir / "run.json").read_text())["resumed_from_epoch"] == 0
    assert list(run_dir.glob("checkpoint_stale_*.pt"))


def test_model_file_of_an_older_network_gives_a_clear_error(tmp_path: Path, tiny_data: dict,
                                                            make_run_config) -> None:
    from kdseg.inference.predict import load_model

    run_dir = tmp_path / "run"
    write_run_config(_config(tiny_data, make_run_config, "baseline"), run_dir / "run_config.yaml")
    train_run(run_dir, threads=1)
    weights, cfg = checkpoint.load_model_file(run_dir / checkpoint.FINAL)
    old = {k: v for k, v in weights.items() if "norm" not in k}
    checkpoint.save_atomic({"state_dict": old, "run_config": cfg}, run_dir / checkpoint.FINAL)
    with pytest.raises(ValueError, match="older kdseg version: retrain"):
        load_model(run_dir, torch.device("cpu"))
