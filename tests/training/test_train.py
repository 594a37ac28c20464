"""Training runs end to end on the tiny dataset: run folder contents, resume, student with KD."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from kdseg.config import write_run_config
from kdseg.inference.predict import predict_run
from kdseg.training import checkpoint
from kdseg.training.loop import train_run


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory, tiny_data: dict,
                make_run_config) -> Path:
    run_dir = tmp_path_factory.mktemp("teacher")
    write_run_config(make_run_config(tiny_data), run_dir / "run_config.yaml")
    train_run(run_dir, threads=1)
    return run_dir


def test_run_folder_is_self_describing(teacher_dir: Path) -> None:
    for name in ("run_config.yaml", "model.pt", "checkpoint_last.pt", "history.csv", "run.json"):
        assert (teacher_dir / name).exists(), name
    history = pd.read_csv(teacher_dir / "history.csv")
    assert list(history["epoch"]) == [0, 1]
    assert {"train/loss", "train/seg", "lr", "val/dice/WT", "val/dice/ET"} <= set(history.columns)
    info = json.loads((teacher_dir / "run.json").read_text())
    assert info["run_key"].startswith("tiny/teacher/flair+t1+t1ce+t2/teacher/fold0/seed0/")
    assert {"git_sha", "versions", "seed", "device", "wall_time_s", "peak_rss_mb"} <= set(info)
    assert info["tags"]["kdseg.stage"] == "teacher"
    state, cfg = checkpoint.load_model_file(teacher_dir / "model.pt")  # weights_only load
    assert cfg["stage"] == "teacher" and all(isinstance(v, torch.Tensor) for v in state.values())


def test_resume_gives_the_same_model(tmp_path: Path, tiny_data: dict, make_run_config,
                                     teacher_dir: Path) -> None:
    """Interrupt after epoch 1 of 2, resume in a new process-like Trainer: same final weights."""
    from kdseg.training.loop import Trainer

    run_dir = tmp_path / "interrupted"
    write_run_config(make_run_config(tiny_data), run_dir / "run_config.yaml")
    Trainer(run_dir).fit(until_epoch=1)  # leaves checkpoint_last.pt after epoch 1
    assert not (run_dir / "model.pt").exists()
    train_run(run_dir, threads=1)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["resumed_from_epoch"] == 1
    resumed, _ = checkpoint.load_model_file(run_dir / "model.pt")
    full, _ = checkpoint.load_model_file(teacher_dir / "model.pt")
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], msg=key)
    assert pd.read_csv(run_dir / "history.csv")["epoch"].tolist() == [0, 1]


def test_checkpoint_of_other_config_is_kept_not_used(tmp_path: Path, tiny_data: dict,
                                                     make_run_config, teacher_dir: Path) -> None:
    run_dir = tmp_path / "run"
    cfg = make_run_config(tiny_data, epochs=1)
    write_run_config(cfg, run_dir / "run_config.yaml")
    shutil.copy(teacher_dir / checkpoint.LAST, run_dir / checkpoint.LAST)  # a 2-epoch config
    train_run(run_dir, threads=1)
    assert list(run_dir.glob("checkpoint_stale_*.pt"))
    assert json.loads((run_dir / "run.json").read_text())["resumed_from_epoch"] == 0


def test_student_with_logit_kd_and_prediction_geometry(tmp_path: Path, tiny_data: dict,
                                                       make_run_config, teacher_dir: Path) -> None:
    import nibabel as nib

    run_dir = tmp_path / "student"
    method = {"name": "logit_kd", "kind": "logit_kd", "temperature": 2.0, "weight": 1.0}
    write_run_config(make_run_config(tiny_data, stage="student", subset="flair", method=method,
                                     teacher_dir=str(teacher_dir), epochs=1),
                     run_dir / "run_config.yaml")
    train_run(run_dir, threads=1)
    history = pd.read_csv(run_dir / "history.csv")
    assert (history["train/kd_logit"] > 0).all()
    test_case = json.loads(tiny_data["splits"].read_text())[0]["test"][0]
    (pred,) = predict_run(run_dir, [test_case], run_dir / "predictions", progress=False)
    ref = nib.load(tiny_data["raw"] / test_case / f"{test_case}_seg.nii.gz")
    out = nib.load(pred)
    assert out.shape == ref.shape
    assert (out.affine == ref.affine).all()
    assert set(map(int, pd.unique(out.get_fdata().ravel()))) <= {0, 1, 2, 4}


@pytest.mark.parametrize("kind", ["kdnet", "pmkl"])
def test_published_methods_train_end_to_end(tmp_path: Path, tiny_data: dict, make_run_config,
                                            teacher_dir: Path, kind: str) -> None:
    """Feature taps, heads in the optimizer, every term logged in history.csv."""
    from kdseg.distill.options import options_dict, parse_method

    run_dir = tmp_path / kind
    method = {"name": kind, **options_dict(*parse_method(kind, {}))}
    write_run_config(make_run_config(tiny_data, stage="student", subset="flair+t1ce", method=method,
                                     teacher_dir=str(teacher_dir), epochs=1),
                     run_dir / "run_config.yaml")
    train_run(run_dir, threads=1)
    history = pd.read_csv(run_dir / "history.csv")
    expected = {"kdnet": ["train/kd_logit", "train/kd_latent"],
                "pmkl": ["train/kd_pixel", "train/kd_contrast"]}[kind]
    for column in expected:
        assert history[column].notna().all() and (history[column] >= 0).all()
    state = checkpoint.load(run_dir / checkpoint.LAST)
    assert bool(state["distiller"]) == (kind == "pmkl")  # pmkl's projection heads are saved


JOINT = {
    "ummkd": ({}, ["train/teacher_seg", "train/kd_prototype"]),
    "ummkd_unpaired": ({"kind": "ummkd", "unpaired": True, "first_conv": "separate"},
                       ["train/teacher_seg", "train/kd_prototype"]),
    "barlow_kd": ({}, ["train/teacher_seg", "train/ds_student", "train/ds_teacher",
                       "train/kd_barlow"]),
}


def _joint_run_config(tiny_data: dict, make_run_config, name: str, epochs: int = 1) -> dict:
    from kdseg.distill.options import options_dict, parse_method

    options, _ = JOINT[name]
    method = {"name": name, **options_dict(*parse_method(name, options))}
    cfg = make_run_config(tiny_data, stage="student", subset="flair+t1ce", method=method,
                          epochs=epochs)
    cfg["model"]["filters"] = [4, 8, 16, 32]  # deep enough for a deep-supervision output
    return cfg


@pytest.mark.parametrize("name", sorted(JOINT))
def test_single_stage_methods_need_no_teacher_and_export_a_plain_student(
        tmp_path: Path, tiny_data: dict, make_run_config, name: str) -> None:
    """No teacher run; the teacher path trains in the same job; model.pt is a plain 2-channel
    student that inference loads like any other."""
    run_dir = tmp_path / name
    write_run_config(_joint_run_config(tiny_data, make_run_config, name),
                     run_dir / "run_config.yaml")
    train_run(run_dir, threads=1)
    history = pd.read_csv(run_dir / "history.csv")
    for column in JOINT[name][1]:
        assert history[column].notna().all() and (history[column] >= 0).all(), column
    assert "val/dice/WT" in history
    state = checkpoint.load(run_dir / checkpoint.LAST)
    assert "teacher_path" in state  # the jointly trained teacher is kept for resume
    weights, _ = checkpoint.load_model_file(run_dir / checkpoint.FINAL)
    assert weights["input_block.conv1.conv.weight"].shape[1] == 2
    test_case = json.loads(tiny_data["splits"].read_text())[0]["test"][0]
    (pred,) = predict_run(run_dir, [test_case], run_dir / "predictions", progress=False)
    assert pred.exists()


def test_rerun_after_input_change_does_not_resume_stale_weights(
        tmp_path: Path, tiny_data: dict, make_run_config) -> None:
    """Same run config, new split contents (as after changing n_cases): the finished checkpoint
    must be moved aside and the run retrained, not 'resumed' with zero epochs left."""
    splits_file = tmp_path / "splits.json"
    shutil.copy(tiny_data["splits"], splits_file)
    run_dir = tmp_path / "run"
    write_run_config({**make_run_config(tiny_data, epochs=1), "splits_file": str(splits_file)},
                     run_dir / "run_config.yaml")
    train_run(run_dir, threads=1)
    fold = json.loads(splits_file.read_text())[0]
    splits_file.write_text(json.dumps([{**fold, "train": fold["train"][:-1],
                                        "val": fold["val"] + fold["train"][-1:]}]))
    for name in ("model.pt", "history.csv", "run.json"):  # what Snakemake deletes on a rerun
        (run_dir / name).unlink()
    train_run(run_dir, threads=1)
    assert json.loads((run_dir / "run.json").read_text())["resumed_from_epoch"] == 0
    assert list(run_dir.glob("checkpoint_stale_*.pt"))
    assert pd.read_csv(run_dir / "history.csv")["epoch"].tolist() == [0]


def test_finished_checkpoint_without_model_is_completed(tmp_path: Path, tiny_data: dict,
                                                       make_run_config, teacher_dir: Path) -> None:
    """Killed after the last checkpoint but before model.pt: the rerun writes model.pt and
    history.csv from the checkpoint without training again."""
    run_dir = tmp_path / "run"
    write_run_config(make_run_config(tiny_data), run_dir / "run_config.yaml")
    shutil.copy(teacher_dir / checkpoint.LAST, run_dir / checkpoint.LAST)
    train_run(run_dir, threads=1)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["resumed_from_epoch"] == 2
    assert pd.read_csv(run_dir / "history.csv")["epoch"].tolist() == [0, 1]
    resumed, _ = checkpoint.load_model_file(run_dir / "model.pt")
    full, _ = checkpoint.load_model_file(teacher_dir / "model.pt")
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], msg=key)
