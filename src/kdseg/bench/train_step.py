"""Training step time of every method against a plain MONAI step (same network, patch, batch).

Times kdseg's real :meth:`~kdseg.training.loop.Trainer.step` for each method on pre-drawn batches
(data loading excluded: the ``data_pipeline`` section measures it), interleaving the methods
round by round so that machine noise hits all of them alike. The reference is the same step
written as a bare MONAI loop: MONAI's ``DynUNet`` with its own instance norm, contiguous
tensors, ``DiceCELoss``, AdamW and gradient clipping — no kdseg code on the path. kdseg's own
network differs only in how it runs (instance norm as ``GroupNorm``, channels-last-3d on the
CPU), so ``ratio`` = (method's step) / (plain MONAI step) is what a user pays for the method
*and* kdseg's implementation, relative to writing the baseline by hand.

Goals (the issue's): two-stage methods (a frozen teacher run forwarded without autograd) ≤ 1.25×
on the CPU and ≤ 1.15× on a GPU (teacher in bf16). Single-stage methods train a whole teacher
path in the same step (≈ 2×, by design) and get no goal.

On CUDA the section also times, at ``gpu_patch``^3 with the config's batch size in bf16: the
teacher, a baseline student and a two-stage student (the KD overhead on that GPU), kdseg's
memory format against the other one, and samples the GPU's utilisation while they run.
"""

from __future__ import annotations

import copy
import math
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from kdseg.bench.common import (
    BenchOptions,
    Row,
    SectionResult,
    interleaved_times,
    median,
    scratch_dir,
    time_ratio_row,
)
from kdseg.bench.fixtures import (
    METHODS,
    bench_config,
    draw_batches,
    make_trainer,
    prepare_data,
    write_untrained_teacher,
)

SECTION = "train_step"
TWO_STAGE_GOAL = {"cpu": 1.25, "cuda": 1.15}
STUDENT_SUBSET = "flair"
GPU_KD_METHOD = "kdnet"  # a two-stage method with both a logit and a latent term


def plain_monai_step(trainer: Any) -> Callable[..., None]:
    """The reference step: the trainer's architecture, loss, optimizer and clipping written as
    a bare MONAI loop (``DynUNet`` with MONAI's instance norm, contiguous memory)."""
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
    channels = list(cfg.input_channels)

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


def _sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


class UtilizationSampler:
    """Mean GPU utilisation (%) while a block runs, from ``nvidia-smi`` every 0.2 s.

    ``torch.cuda.utilization`` needs pynvml, which kdseg does not depend on; ``nvidia-smi``
    ships with every driver. ``mean`` is ``None`` where neither a GPU nor the tool exists.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.2) -> None:
        self.device = device
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _poll(self) -> None:
        # By UUID: CUDA's device numbers follow CUDA_VISIBLE_DEVICES and speed order,
        # nvidia-smi's follow the PCI bus.
        uuid = str(torch.cuda.get_device_properties(self.device).uuid)
        gpu_id = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
        while not self._stop.wait(self.interval_s):
            try:
                out = subprocess.run(
                    ["nvidia-smi", f"--id={gpu_id}", "--query-gpu=utilization.gpu",
                     "--format=csv,noheader,nounits"],
                    capture_output=True, text=True, timeout=5, check=True).stdout
                self.samples.append(float(out.strip().splitlines()[0]))
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                return

    def __enter__(self) -> UtilizationSampler:
        if self.device.type == "cuda":
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def _method_rows(opts: BenchOptions, config: dict[str, Any]) -> tuple[list[Row], pd.DataFrame,
                                                                       dict[str, Any]]:
    """Every method's step at the config's patch vs the plain MONAI step."""
    rounds, per_round, warmup = (2, 2, 1) if opts.quick else (10, 6, 3)
    trainers = {m: make_trainer(config, STUDENT_SUBSET, m) for m in METHODS}
    base = trainers["baseline"]
    n = warmup + rounds * per_round
    batches = {m: draw_batches(trainers[m], n) for m in METHODS}
    batches["monai_plain"] = batches["baseline"]
    if opts.compile:  # train.compile: the first (warm-up) step compiles, minutes on a CPU
        compiled = copy.deepcopy(config)
        compiled["train"]["compile"] = True
        for m in ("baseline", GPU_KD_METHOD):
            trainers[f"{m}+compile"] = make_trainer(compiled, STUDENT_SUBSET, m)
            batches[f"{m}+compile"] = batches[m]
    steps: dict[str, Callable[..., object]] = {"monai_plain": plain_monai_step(base)}
    steps.update({m: t.step for m, t in trainers.items()})
    cursor = dict.fromkeys(steps, 0)

    def call(name: str) -> Callable[[], object]:
        def run() -> object:
            batch = batches[name][cursor[name] % n]
            cursor[name] += 1
            return steps[name](*batch)
        return run

    times = interleaved_times({name: call(name) for name in steps}, rounds=rounds,
                              per_round=per_round, warmup=warmup, sync=_sync(base.device))
    ref = median(times["monai_plain"])
    own = median(times["baseline"])
    device_type = base.device.type
    goal = TWO_STAGE_GOAL["cuda" if device_type == "cuda" else "cpu"]
    rows, details = [], []
    for name, values in times.items():
        s = median(values)
        teacher = "none" if name == "monai_plain" else trainers[name].distiller.teacher
        details.append({"variant": name, "teacher": teacher, "median_step_s": s,
                        "mean_step_s": sum(values) / len(values),
                        "ratio_vs_monai_plain": s / ref, "ratio_vs_kdseg_baseline": s / own,
                        "n_steps": len(values),
                        "patch": "x".join(map(str, base.cfg.train.patch_size)),
                        "batch": base.cfg.train.batch_size})
        if name == "monai_plain":
            continue
        two_stage = teacher == "frozen"
        note = (f"{s / own:.2f}× kdseg baseline; teacher: "
                + {"frozen": "frozen run, no autograd", "joint": "path trained in the step",
                   "none": "none"}[teacher])
        rows.append(time_ratio_row(SECTION, f"{name} step", s, "s/step", "plain MONAI step",
                                   ref, goal if two_stage else None, note))
    meta = {"patch_size": list(base.cfg.train.patch_size), "batch_size": base.cfg.train.batch_size,
            "filters": list(base.cfg.model.filters), "student": STUDENT_SUBSET,
            "rounds": rounds, "steps_per_round": per_round, "device": str(base.device),
            "amp": base.amp,
            "step_s": {d["variant"]: d["median_step_s"] for d in details}}
    return rows, pd.DataFrame(details), meta


def gpu_rows(opts: BenchOptions, workdir: Path) -> tuple[list[Row], pd.DataFrame,
                                                         dict[str, Any]]:
    """Teacher, baseline student and a two-stage student at ``gpu_patch``^3 (bf16 on CUDA),
    both memory formats, with the GPU's utilisation. Runs on any device (the tests call it on
    the CPU with a tiny patch); only CUDA numbers are meaningful."""
    edge = opts.gpu_patch
    config = bench_config(opts, workdir / "gpu", patch_size=(edge, edge, edge))
    prepare_data(config)
    write_untrained_teacher(config)
    variants = {"teacher": ("teacher", "teacher"), "baseline": (STUDENT_SUBSET, "baseline"),
                GPU_KD_METHOD: (STUDENT_SUBSET, GPU_KD_METHOD)}
    rounds, per_round, warmup = (1, 1, 1) if opts.quick else (5, 10, 5)
    details, timed = [], {}
    for fmt in ("channels_last", "contiguous"):
        config["train"]["memory_format"] = fmt
        trainers = {name: make_trainer(config, subset, method)
                    for name, (subset, method) in variants.items()}
        device = trainers["baseline"].device
        n = warmup + rounds * per_round
        batches = {name: draw_batches(t, n) for name, t in trainers.items()}
        steps: dict[str, Callable[..., object]] = {name: t.step for name, t in trainers.items()}
        steps["monai_plain"] = plain_monai_step(trainers["baseline"])  # same student batches
        batches["monai_plain"] = batches["baseline"]
        for name, step in steps.items():
            it = iter(batches[name] * 2)
            call = lambda step=step, it=it: step(*next(it))  # noqa: E731
            for _ in range(warmup):  # cuDNN autotuning and allocator growth, not sampled
                call()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            with UtilizationSampler(device) as util:
                times = interleaved_times({name: call}, rounds=rounds, per_round=per_round,
                                          warmup=0, sync=_sync(device))[name]
            peak = (torch.cuda.max_memory_allocated(device) / 2**20
                    if device.type == "cuda" else math.nan)
            timed[(fmt, name)] = median(times)
            details.append({"memory_format": fmt, "network": name, "patch": f"{edge}^3",
                            "batch": trainers["baseline"].cfg.train.batch_size,
                            "amp_bf16": trainers["baseline"].amp,
                            "median_step_s": median(times), "gpu_util_pct": util.mean,
                            "peak_gpu_mib": peak, "device": str(device)})
        del trainers, batches, steps
        if device.type == "cuda":
            torch.cuda.empty_cache()
    best = min(("channels_last", "contiguous"), key=lambda f: timed[(f, "baseline")])
    rows = []
    utils = {(d["memory_format"], d["network"]): d["gpu_util_pct"] for d in details}
    for name in variants:
        u = utils[(best, name)]
        rows.append(Row(SECTION, f"{name} step at {edge}^3 ({best})", timed[(best, name)],
                        "s/step", note=f"GPU utilisation {u:.0f} %" if u is not None
                        else "no utilisation reading"))
    goal = TWO_STAGE_GOAL["cuda"]
    # The goal as on the CPU: against the plain MONAI step (same network, patch, batch, bf16);
    # the overhead against kdseg's own baseline is the context row below it.
    rows.append(time_ratio_row(SECTION, f"{GPU_KD_METHOD} step at {edge}^3",
                               timed[(best, GPU_KD_METHOD)], "s/step", "plain MONAI step",
                               timed[(best, "monai_plain")], goal))
    rows.append(time_ratio_row(SECTION, f"KD overhead at {edge}^3 ({GPU_KD_METHOD})",
                               timed[(best, GPU_KD_METHOD)], "s/step", "kdseg baseline step",
                               timed[(best, "baseline")], None))
    other = "contiguous" if best == "channels_last" else "channels_last"
    rows.append(time_ratio_row(SECTION, f"memory format at {edge}^3: {best}",
                               timed[(best, "baseline")], "s/step", f"{other} step",
                               timed[(other, "baseline")], None, "student baseline"))
    meta = {"gpu_patch": edge, "best_memory_format": best,
            "gpu_step_s": timed[(best, "baseline")],
            "gpu_teacher_step_s": timed[(best, "teacher")],
            "gpu_kd_ratio": timed[(best, GPU_KD_METHOD)] / timed[(best, "baseline")],
            "gpu_monai_plain_step_s": timed[(best, "monai_plain")]}
    return rows, pd.DataFrame(details), meta


def run(opts: BenchOptions, previous: dict[str, SectionResult]) -> SectionResult:
    del previous
    with scratch_dir(opts, SECTION) as workdir:
        return _run(opts, workdir)


def _run(opts: BenchOptions, workdir: Path) -> SectionResult:
    config = bench_config(opts, workdir / "config_patch")
    prepare_data(config)
    write_untrained_teacher(config)
    rows, details, meta = _method_rows(opts, config)
    if meta["device"].startswith("cuda"):
        g_rows, g_details, g_meta = gpu_rows(opts, workdir)
        rows += g_rows
        details = pd.concat([details, g_details], ignore_index=True)
        meta.update(g_meta)
    else:
        rows.append(Row(SECTION, f"GPU steps at {opts.gpu_patch}^3", math.nan, "s/step",
                        note="not measured: no CUDA device (run `kdseg bench --device cuda`)"))
    return SectionResult(rows, details, meta)
