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
