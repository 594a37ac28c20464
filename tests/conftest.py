"""Shared fixtures: a tiny synthetic dataset, preprocessed and split, built once per session."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def default_config() -> dict:
    """config/config.yaml with the schema defaults filled in, as Snakemake would see it."""
    from snakemake.utils import validate

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    validate(config, str(REPO / "workflow/schemas/config.schema.yaml"))
    return config


@pytest.fixture
def config(default_config: dict) -> dict:
    return copy.deepcopy(default_config)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """6 synthetic 32x36x32 cases -> preprocessed arrays -> splits (1 fold)."""
    from kdseg.data.labels import BRATS_LEGACY
    from kdseg.data.preprocess import preprocess_dataset
    from kdseg.data.splits import make_splits, write_splits
    from kdseg.data.synthetic import MODALITIES, SyntheticSpec, synthesize_dataset

    root = tmp_path_factory.mktemp("tiny")
    raw, pre = root / "raw", root / "preprocessed"
    ids = synthesize_dataset(raw, SyntheticSpec(n_cases=6, shape=(32, 36, 32), seed=1),
                             progress=False)
    preprocess_dataset(raw, pre, MODALITIES, BRATS_LEGACY, progress=False)
    splits = root / "splits.json"
    write_splits(make_splits(ids, folds=1, test_fraction=0.34, val_fraction=0.25, seed=0), splits)
    return {"root": root, "raw": raw, "preprocessed": pre, "splits": splits}


@pytest.fixture(scope="session")
def make_run_config():
    """Builder of valid run-config dicts for the tiny dataset."""
    return tiny_run_config


def tiny_run_config(data: dict[str, Path], stage: str = "teacher", subset: str = "flair+t1+t1ce+t2",
                    method: dict | None = None, teacher_dir: str | None = None,
                    epochs: int = 2, iterations: int = 3) -> dict:
    """A valid run config dict for the tiny dataset (fast: 16^3 patches, 2-level net)."""
    return {
        "stage": stage, "dataset": "tiny", "preprocessed_dir": str(data["preprocessed"]),
        "splits_file": str(data["splits"]), "labels": "brats",
        "modalities": ["t1", "t1ce", "t2", "flair"], "input_modalities": subset.split("+"),
        "subset": subset, "method": method or {"name": "teacher", "kind": "baseline"},
        "fold": 0, "seed": 0,
        "model": {"filters": [4, 8, 16], "kernel_size": 3, "norm": "instance", "dropout": 0.0},
        "train": {"patch_size": [16, 16, 16], "batch_size": 2, "epochs": epochs,
                  "iterations_per_epoch": iterations, "val_every": 1, "max_val_cases": 1},
        "inference": {"overlap": 0.25, "sw_batch_size": 2, "mode": "gaussian"},
        "teacher_dir": teacher_dir,
    }
