"""A training job killed mid-epoch (SIGTERM as at a SLURM time limit, or SIGKILL) and started
again resumes from its last epoch checkpoint and ends with exactly the weights of a run that was
never interrupted (same seed, CPU, deterministic data stream per epoch)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from kdseg.config import write_run_config
from kdseg.training import checkpoint

EPOCHS, ITERATIONS = 4, 6


def _train(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "kdseg", "train", "--run-dir", str(run_dir), "--threads", "1"]
    log = (run_dir / "train.log").open("ab")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def _epochs_done(run_dir: Path) -> int:
    path = run_dir / checkpoint.LAST
    if not path.exists():
        return 0
    try:
        return int(checkpoint.load(path, torch.device("cpu"))["epoch"])
    except (ValueError, KeyError, RuntimeError, EOFError):
        return 0  # being replaced right now (atomic rename): look again


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, tiny_data: dict,
                  make_run_config) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    write_run_config(make_run_config(tiny_data, epochs=EPOCHS, iterations=ITERATIONS),
                     run_dir / "run_config.yaml")
    assert _train(run_dir).wait(timeout=600) == 0
    return run_dir


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_mid_epoch_resumes_to_the_same_model(tmp_path: Path, tiny_data: dict,
                                                    make_run_config, uninterrupted: Path,
                                                    sig: signal.Signals) -> None:
    run_dir = tmp_path / "killed"
    write_run_config(make_run_config(tiny_data, epochs=EPOCHS, iterations=ITERATIONS),
                     run_dir / "run_config.yaml")
    proc = _train(run_dir)
    deadline = time.monotonic() + 300
    while _epochs_done(run_dir) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed; make it longer"
    proc.send_signal(sig)  # epoch 2 (of 0..3) is under way
    assert proc.wait(timeout=60) != 0
    assert not (run_dir / "model.pt").exists()
    killed_at = _epochs_done(run_dir)
    assert 2 <= killed_at < EPOCHS

    assert _train(run_dir).wait(timeout=600) == 0
    info = pd.read_json(run_dir / "run.json", typ="series")
    assert info["resumed_from_epoch"] == killed_at
    resumed, _ = checkpoint.load_model_file(run_dir / "model.pt")
    full, _ = checkpoint.load_model_file(uninterrupted / "model.pt")
    assert resumed.keys() == full.keys()
    for key in full:
        assert torch.equal(resumed[key], full[key]), key  # bit for bit, not merely close
    history = pd.read_csv(run_dir / "history.csv")
    assert history["epoch"].tolist() == list(range(EPOCHS))
    reference = pd.read_csv(uninterrupted / "history.csv")
    same = [c for c in reference if not c.startswith("time/")]  # timings differ, nothing else
    pd.testing.assert_frame_equal(history[same], reference[same])
