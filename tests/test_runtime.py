"""Thread limits: every stage can be held to a workflow job's ``threads``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kdseg.cli import build_parser
from kdseg.config import train_job_threads


def test_limit_threads_caps_torch_blas_and_children() -> None:
    code = ("import json, os, torch; from kdseg.runtime import limit_threads, thread_report;"
            "limit_threads(1); r = thread_report();"
            "print(json.dumps({'report': r, 'omp': os.environ['OMP_NUM_THREADS']}))")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env).stdout
    data = json.loads(out)
    assert data["omp"] == "1"
    assert data["report"]["torch_intra_op"] == 1
    assert data["report"]["torch_inter_op"] == 1
    assert all(n == 1 for n in data["report"].values())  # every loaded BLAS/OpenMP pool


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_limit_threads_rejects_non_positive_integers(bad: object) -> None:
    from kdseg.runtime import limit_threads

    with pytest.raises(ValueError, match="positive integer"):
        limit_threads(bad)  # type: ignore[arg-type]


def test_every_stage_accepts_threads() -> None:
    parser = build_parser()
    stages = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, sub in stages.items():
        assert any("--threads" in a.option_strings for a in sub._actions), name


def test_train_job_threads_adds_one_core_per_loader_worker() -> None:
    config = {"train": {"num_workers": 2}, "teacher": {"train": {"num_workers": 0}},
              "resources": {"train_threads": 3}}
    assert train_job_threads(config, "student") == 5
    assert train_job_threads(config, "teacher") == 3
    assert train_job_threads({"train": {}, "resources": {"train_threads": 1}}, "student") == 1


def test_train_job_gives_torch_the_cores_its_loader_workers_leave(
        tmp_path, tiny_data: dict, make_run_config) -> None:
    """`kdseg train --threads 3` with 2 DataLoader workers: one torch thread (intra- and
    inter-op), recorded in run.json; a fresh process, as a workflow job is."""
    from kdseg.config import write_run_config

    cfg = make_run_config(tiny_data, epochs=1, iterations=2)
    cfg["train"]["num_workers"] = 2
    write_run_config(cfg, tmp_path / "run_config.yaml")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    subprocess.run([sys.executable, "-m", "kdseg", "train", "--run-dir", str(tmp_path),
                    "--threads", "3"], check=True, capture_output=True, env=env)
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["threads"] == 1 and info["num_workers"] == 2
    assert info["thread_pools"]["torch_inter_op"] == 1
