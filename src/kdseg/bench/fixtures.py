"""A small prepared dataset, untrained teacher and real ``Trainer`` objects for the sections
that time training steps or the patch loader.

Everything is generated in a scratch folder by kdseg's own synthesize/preprocess/split code,
the way the workflow does it, so the code under test is the code the benchmark runs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from kdseg.bench.common import BenchOptions

METHODS: tuple[str, ...] = ("baseline", "logit_kd", "kdnet", "pmkl", "ummkd", "barlow_kd")
"""Every method kind, each with its registry defaults (not a tuned setting)."""


def bench_config(opts: BenchOptions, results_dir: Path,
                 patch_size: tuple[int, int, int] | None = None) -> dict[str, Any]:
    """The workflow config of ``opts.config`` (schema-validated, defaults filled) with every
    method kind, a small dataset and the benchmark's device; ``patch_size`` overrides the
    config's (the GPU section's 128^3)."""
    from snakemake.utils import validate

    config = yaml.safe_load(Path(opts.config).read_text())
    validate(config, str(schema_path(Path(opts.config))))
    config = copy.deepcopy(config)
    config["results_dir"] = str(results_dir)
    config["dataset"].update(name="bench", source="synthetic", root=None)
    syn = config["dataset"]["synthetic"]
    syn["n_cases"] = 4 if opts.quick else 8
    if patch_size is not None:
        config["train"]["patch_size"] = list(patch_size)
        # the synthetic grid must hold a patch (the crop keeps ~90 % of it)
        syn["shape"] = [max(s, int(p * 1.25)) for s, p in zip(syn["shape"], patch_size,
                                                                strict=True)]
    config["methods"] = {kind: {"kind": kind} for kind in METHODS}
    config["students"]["methods"] = list(METHODS)
    config["train"]["device"] = opts.device
    config["train"]["num_workers"] = 0
    config["seeds"] = [0]
    return config


def schema_path(config_path: Path) -> Path:
    """The workflow's config schema: next to the config (``<repo>/config/x.yaml``) or next to
    this source tree (an editable install)."""
    rel = Path("workflow/schemas/config.schema.yaml")
    for root in (*config_path.resolve().parents, *Path(__file__).resolve().parents):
        if (root / rel).is_file():
            return root / rel
    raise FileNotFoundError(f"{rel} not found above {config_path} (run from the repository)")


def prepare_data(config: dict[str, Any]) -> None:
    """Synthesize, preprocess and split a small dataset exactly as the workflow would."""
    from kdseg.config import data_dir
    from kdseg.data.labels import get_convention
    from kdseg.data.preprocess import preprocess_dataset
    from kdseg.data.splits import make_splits, write_splits
    from kdseg.data.synthetic import SyntheticSpec, synthesize_dataset

    base = Path(data_dir(config))
    syn = config["dataset"]["synthetic"]
    ids = synthesize_dataset(base / "raw", SyntheticSpec(n_cases=syn["n_cases"],
                                                         shape=tuple(syn["shape"]), seed=0),
                             progress=False)
    preprocess_dataset(base / "raw", base / "preprocessed", config["dataset"]["modalities"],
                       get_convention(config["dataset"]["labels"]), progress=False)
    write_splits(make_splits(ids, folds=1, test_fraction=0.25, val_fraction=0.0, seed=0),
                 base / "splits.json")


def write_untrained_teacher(config: dict[str, Any]) -> None:
    """A teacher ``model.pt`` with initial weights: a trained one costs the same per step."""
    from kdseg.config import parse_run_config, teacher_dir, teacher_run_config, write_run_config
    from kdseg.data.labels import get_convention
    from kdseg.models.factory import build_network
    from kdseg.training import checkpoint

    run = Path(teacher_dir(config, 0, 0))
    cfg = teacher_run_config(config, 0, 0)
    write_run_config(cfg, run / "run_config.yaml")
    net = build_network(parse_run_config(cfg).model, len(cfg["input_modalities"]),
                        get_convention(cfg["labels"]).num_classes)
    checkpoint.save_atomic({"state_dict": net.state_dict(), "run_config": cfg}, run / "model.pt")


def make_trainer(config: dict[str, Any], subset: str, method: str) -> Any:
    """kdseg's real :class:`~kdseg.training.loop.Trainer` for one student (or ``teacher``),
    in training mode."""
    from kdseg.config import (
        student_dir,
        student_run_config,
        teacher_dir,
        teacher_run_config,
        write_run_config,
    )
    from kdseg.training.loop import Trainer

    if method == "teacher":
        run = Path(teacher_dir(config, 0, 0)).with_name("teacher_bench")
        write_run_config(teacher_run_config(config, 0, 0), run / "run_config.yaml")
    else:
        run = Path(student_dir(config, subset, method, 0, 0))
        write_run_config(student_run_config(config, subset, method, 0, 0),
                         run / "run_config.yaml")
    trainer = Trainer(run)
    trainer.net.train()
    if trainer.joint:
        trainer.teacher.train()
    return trainer


def draw_batches(trainer: Any, n: int) -> list[tuple[Any, ...]]:
    """``n`` batches from the trainer's own patch stream (drawn before timing starts)."""
    import torch

    loader = torch.utils.data.DataLoader(trainer.data, batch_size=trainer.cfg.train.batch_size)
    stream = iter(loader)
    return [next(stream) for _ in range(n)]
