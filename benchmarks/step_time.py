"""Training step time of every distillation method relative to the baseline student.

Measures kdseg's real ``Trainer.step`` (the code the benchmark runs) for each method on the same
network, patch and batch, in one process, interleaving the methods round by round so that
machine noise hits all of them alike. Data loading is excluded (batches are drawn beforehand),
so the numbers isolate the cost of the method: a frozen teacher's forward pass (two-stage
methods), heads and loss terms, or a whole jointly trained teacher path (single-stage methods).
A plain MONAI step (MONAI's DynUNet with its instance norm, contiguous tensors, DiceCE, AdamW,
gradient clipping: no kdseg code) is the reference for what kdseg's own baseline step costs
(kdseg runs instance norm as GroupNorm and uses channels-last on the CPU).

Usage (CPU, one thread like one workflow job)::

    .venv/bin/python benchmarks/step_time.py                 # default config's protocol
    .venv/bin/python benchmarks/step_time.py --device cuda --threads 8

Prints a table and writes ``step_time.csv`` and ``step_time.json`` (with the machine) to
``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
# Every method kind with its default options (the registry's defaults, not a tuned setting).
METHODS = ["baseline", "logit_kd", "kdnet", "pmkl", "ummkd", "barlow_kd"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=REPO / "config/config.yaml",
                   help="benchmark config whose model/train protocol is measured")
    p.add_argument("--subset", default="flair", help="student modality subset (default flair)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=1, help="torch threads (a workflow job: 1)")
    p.add_argument("--rounds", type=int, default=10, help="interleaved measurement rounds")
    p.add_argument("--steps", type=int, default=6, help="timed steps per method per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per method first")
    p.add_argument("--out", type=Path, default=REPO / "results/benchmarks",
                   help="folder for step_time.csv / step_time.json")
    return p.parse_args(argv)


def benchmark_config(path: Path, results_dir: Path, device: str) -> dict:
    """The workflow config (schema defaults filled) with every method kind and a small dataset."""
    from snakemake.utils import validate

    config = yaml.safe_load(path.read_text())
    validate(config, str(REPO / "workflow/schemas/config.schema.yaml"))
    config = copy.deepcopy(config)
    config["results_dir"] = str(results_dir)
    config["dataset"]["name"] = "bench"
    config["dataset"]["synthetic"]["n_cases"] = 8
    config["methods"] = {kind: {"kind": kind} for kind in METHODS}
    config["students"]["methods"] = list(METHODS)
    config["train"]["device"] = device
    config["train"]["num_workers"] = 0
    return config


def prepare_data(config: dict) -> None:
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


def write_untrained_teacher(config: dict) -> None:
    """A teacher ``model.pt`` with initial weights: a trained one costs the same per step."""
    from kdseg.config import teacher_dir, teacher_run_config, write_run_config
    from kdseg.data.labels import get_convention
    from kdseg.models.factory import build_network
    from kdseg.training import checkpoint

    run = Path(teacher_dir(config, 0, 0))
    cfg = teacher_run_config(config, 0, 0)
    write_run_config(cfg, run / "run_config.yaml")
    net = build_network(_model(cfg), len(cfg["input_modalities"]),
                        get_convention(cfg["labels"]).num_classes)
    checkpoint.save_atomic({"state_dict": net.state_dict(), "run_config": cfg}, run / "model.pt")


def _model(cfg: dict):
    from kdseg.config import parse_run_config

    return parse_run_config(cfg).model


def make_trainer(config: dict, subset: str, method: str):
    from kdseg.config import student_dir, student_run_config, write_run_config
    from kdseg.training.loop import Trainer

    run = Path(student_dir(config, subset, method, 0, 0))
    write_run_config(student_run_config(config, subset, method, 0, 0), run / "run_config.yaml")
    trainer = Trainer(run)
    trainer.net.train()
    if trainer.joint:
        trainer.teacher.train()
    return trainer


def draw_batches(trainer, n: int) -> list[tuple[torch.Tensor, ...]]:
    loader = torch.utils.data.DataLoader(trainer.data, batch_size=trainer.cfg.train.batch_size)
    stream = iter(loader)
    return [next(stream) for _ in range(n)]


def plain_monai_step(trainer) -> Callable[..., None]:
    """Reference: the same architecture, loss, optimizer and clipping written as a bare MONAI
    loop: ``DynUNet`` with MONAI's own instance norm (with affine, nnU-Net's), contiguous
    memory, no kdseg code on the path."""
    from monai.losses import DiceCELoss
    from monai.networks.nets import DynUNet

    cfg = trainer.cfg
    levels = len(cfg.model.filters)
    torch.manual_seed(0)
    net = DynUNet(spatial_dims=3, in_channels=len(cfg.input_modalities),
                  out_channels=trainer.num_classes, kernel_size=[cfg.model.kernel_size] * levels,
                  strides=[1] + [2] * (levels - 1), upsample_kernel_size=[2] * (levels - 1),
                  filters=list(cfg.model.filters), norm_name=("instance", {"affine": True}),
                  res_block=False).to(trainer.device).train()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.train.lr,
                            weight_decay=cfg.train.weight_decay)
    channels = cfg.input_channels

    def step(image: torch.Tensor, label: torch.Tensor, *_: torch.Tensor) -> None:
        x = image.to(trainer.device)[:, channels]
        y = label.to(trainer.device)
        with torch.autocast(trainer.device.type, dtype=torch.bfloat16, enabled=trainer.amp):
            loss = loss_fn(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.train.grad_clip)
        opt.step()
        loss.item()  # kdseg's step reads its loss too (a host sync on the GPU)

    return step


def machine(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": torch.multiprocessing.cpu_count(), "threads": torch.get_num_threads(),
            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="kdseg-bench-") as tmp:
        config = benchmark_config(args.config, Path(tmp), args.device)
        print("preparing a small synthetic dataset ...", file=sys.stderr)
        prepare_data(config)
        write_untrained_teacher(config)
        trainers = {m: make_trainer(config, args.subset, m) for m in METHODS}
        device = trainers["baseline"].device
        n_batches = args.warmup + args.rounds * args.steps
        steps: dict[str, Callable[..., object]] = {"monai_plain": plain_monai_step(
            trainers["baseline"])}
        steps.update({m: t.step for m, t in trainers.items()})
        batches = {m: draw_batches(trainers[m], n_batches) for m in METHODS}
        batches["monai_plain"] = batches["baseline"]
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        times: dict[str, list[float]] = {name: [] for name in steps}
        for name, step in steps.items():  # warm-up (allocator, cudnn autotuning)
            for batch in batches[name][: args.warmup]:
                step(*batch)
        print(f"timing {len(steps)} variants x {args.rounds} rounds x {args.steps} steps "
              f"on {device} ({args.threads} thread(s)) ...", file=sys.stderr)
        for r in range(args.rounds):
            for name, step in steps.items():
                start = args.warmup + r * args.steps
                for batch in batches[name][start:start + args.steps]:
                    sync()
                    t0 = time.perf_counter()
                    step(*batch)
                    sync()
                    times[name].append(time.perf_counter() - t0)

    base = statistics.median(times["baseline"])
    teacher_of = {m: trainers[m].distiller.teacher for m in METHODS}
    rows = [{"method": name, "teacher": teacher_of.get(name, "none"),
             "median_step_s": statistics.median(v), "mean_step_s": statistics.fmean(v),
             "ratio_vs_baseline": statistics.median(v) / base, "n_steps": len(v)}
            for name, v in times.items()]
    table = pd.DataFrame(rows)
    cfg = trainers["baseline"].cfg
    meta = {"machine": machine(device), "subset": args.subset,
            "patch_size": list(cfg.train.patch_size), "batch_size": cfg.train.batch_size,
            "filters": list(cfg.model.filters), "rounds": args.rounds, "steps": args.steps,
            "results": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "step_time.csv", index=False)
    (args.out / "step_time.json").write_text(json.dumps(meta, indent=2))
    print(f"\npatch {meta['patch_size']}, batch {meta['batch_size']}, filters {meta['filters']}, "
          f"student {args.subset}, {device}, {args.threads} thread(s)")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    print(f"\nwritten: {args.out / 'step_time.csv'}, {args.out / 'step_time.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
