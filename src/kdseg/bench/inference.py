"""``kdseg bench inference``: seconds per full-size case with sliding-window inference.

The reference is MONAI's own call the way a MONAI user writes it, on the **same** network
object and the same input tensor::

    with torch.no_grad():
        logits = sliding_window_inference(x, roi_size=patch, sw_batch_size=..., predictor=net,
                                          overlap=..., mode=...)
        classes = logits.argmax(dim=1)

kdseg's path is :func:`kdseg.inference.predict.predict_classes` (what ``predict_run`` calls for
every case): the same MONAI sliding window, bf16 autocast + cuDNN autotuning on CUDA, and a
cheaper argmax (``max(dim).indices``). On the CPU the argmax is the whole difference (0.84 s vs
0.15-0.19 s at 240x240x155); the network's forward is ~95 % of the rest. Both produce
``(X, Y, Z)`` class maps on the host; the section checks they agree.

Networks are untrained (time does not depend on the weights), built from the config's model
block like the workflow's: the teacher (every modality) and a one-modality student. Input is a
``(C, *full_shape)`` standard-normal tensor (preprocessed cases are z-scored). Rounds alternate
MONAI and kdseg (:func:`~kdseg.bench.common.interleaved_times`); rows report the medians of wall
time, details also the process CPU time of each call, which other jobs on a shared machine
disturb much less (with one thread it is the work done).

A context row (no goal): the end-to-end ``predict_run`` time per case on a small prepared
dataset (load the preprocessed case, predict, restore the original geometry, write NIfTI);
those cases have the config's synthetic shape, not the full size.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kdseg.bench.common import (
    BenchOptions,
    Row,
    SectionResult,
    interleaved_times,
    median,
    scratch_dir,
    speedup_row,
)

SECTION = "inference"
QUICK_SHAPE: tuple[int, int, int] = (48, 48, 40)
QUICK_SYNTHETIC_SHAPE: tuple[int, int, int] = (32, 36, 32)
REFERENCE = "MONAI sliding_window_inference + argmax"


def _cpu_timed(fn: Callable[[], Any], sink: list[float],
               results: list[Any]) -> Callable[[], Any]:
    """``fn`` that also appends its process CPU seconds to ``sink`` and keeps its last result."""
    def call() -> Any:
        t0 = time.process_time()
        out = fn()
        sink.append(time.process_time() - t0)
        results[:] = [out]
        return out
    return call


def window_count(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> int:
    """Number of sliding windows MONAI uses for a case of ``shape`` (padded up to ``roi``)."""
    from monai.data.utils import dense_patch_slices

    grid = tuple(max(s, r) for s, r in zip(shape, roi, strict=True))
    # MONAI's scan interval (monai.inferers.utils._get_scan_interval, private there)
    step = tuple(r if r == g else max(int(r * (1 - overlap)), 1) for g, r in zip(grid, roi,
                                                                               strict=True))
    return len(dense_patch_slices(grid, roi, step))


def compare_network(name: str, net: Any, in_channels: int, shape: tuple[int, int, int],
                    run_cfg: Any, device: Any, rounds: int) -> tuple[Row, list[dict[str, Any]],
                                                                     dict[str, Any]]:
    """Time MONAI's call and kdseg's ``predict_classes`` on ``net`` for one ``(C, *shape)``
    case; returns the summary row, detail records and metadata (incl. class agreement)."""
    import torch
    from monai.inferers import sliding_window_inference

    from kdseg.inference.predict import predict_classes

    roi = tuple(int(p) for p in run_cfg.train.patch_size)
    inf = run_cfg.inference
    cuda = device.type == "cuda"
    gen = torch.Generator().manual_seed(0)
    image = torch.randn((in_channels, *shape), generator=gen)  # (C, X, Y, Z), host
    # predict_run loads a CUDA case straight into pinned memory (the channel selection copies
    # anyway); pinning here is outside the timed region, like that load.
    image_kdseg = image.pin_memory() if cuda else image

    def monai_call(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            logits = sliding_window_inference(
                x.to(device)[None], roi_size=roi, sw_batch_size=inf.sw_batch_size,
                predictor=net, overlap=inf.overlap, mode=inf.mode)
            return logits.argmax(dim=1)[0].cpu().numpy()

    def kdseg_call(x: torch.Tensor) -> np.ndarray:
        return predict_classes(net, x, roi, inf, device, run_cfg.train.amp)

    # Warm up on a small case with the same window shape (oneDNN/cuDNN pick their kernels per
    # shape): cheaper than an untimed full-size call.
    small = torch.randn((in_channels, *(2 * r for r in roi)), generator=gen)
    monai_call(small)
    kdseg_call(small.pin_memory() if cuda else small)

    cpu: dict[str, list[float]] = {"monai": [], "kdseg": []}
    last: dict[str, list[Any]] = {"monai": [], "kdseg": []}
    wall = interleaved_times(
        {"monai": _cpu_timed(lambda: monai_call(image), cpu["monai"], last["monai"]),
         "kdseg": _cpu_timed(lambda: kdseg_call(image_kdseg), cpu["kdseg"], last["kdseg"])},
        rounds=rounds, warmup=0, sync=torch.cuda.synchronize if cuda else None)

    ours, ref = median(wall["kdseg"]), median(wall["monai"])
    cpu_ratio = median(cpu["monai"]) / median(cpu["kdseg"])
    differ = float(np.mean(last["monai"][0] != last["kdseg"][0]))
    windows = window_count(shape, roi, inf.overlap)
    amp = bool(run_cfg.train.amp and cuda)
    note = (f"{windows} windows of {'x'.join(map(str, roi))}, overlap {inf.overlap:g}, "
            f"sw_batch {inf.sw_batch_size}, {inf.mode}; CPU-time ratio {cpu_ratio:.3g}x; "
            f"classes differ in {differ:.2g} of voxels"
            + ("; kdseg in bf16 autocast, MONAI in float32" if amp else ""))
    row = speedup_row(SECTION, f"s/case {name} ({in_channels} ch), "
                      f"{'x'.join(map(str, shape))}", ours, "s", REFERENCE, ref,
                      min_speedup=1.0, note=note)
    records = [{"network": name, "in_channels": in_channels, "variant": variant,
                "round": i, "wall_s": w, "cpu_s": c, "shape": "x".join(map(str, shape))}
               for variant in ("monai", "kdseg")
               for i, (w, c) in enumerate(zip(wall[variant], cpu[variant], strict=True))]
    meta = {"wall_median_s": {"monai": ref, "kdseg": ours},
            "cpu_median_s": {"monai": median(cpu["monai"]), "kdseg": median(cpu["kdseg"])},
            "cpu_ratio": cpu_ratio, "class_differ_fraction": differ, "windows": windows,
            "kdseg_bf16_autocast": amp}
    return row, records, meta


def predict_run_per_case(opts: BenchOptions, config: dict[str, Any],
                         rounds: int) -> tuple[Row, list[dict[str, Any]], dict[str, Any]]:
    """End-to-end ``predict_run`` seconds per case (load, predict, restore, write NIfTI) of
    the untrained teacher on a small dataset prepared by :mod:`kdseg.bench.fixtures` from
    ``config`` (:func:`~kdseg.bench.fixtures.bench_config`)."""
    import torch

    from kdseg.bench.fixtures import prepare_data, write_untrained_teacher
    from kdseg.config import data_dir, teacher_dir
    from kdseg.data.splits import load_fold
    from kdseg.inference.predict import predict_run

    assert opts.workdir is not None
    config = copy.deepcopy(config)
    if opts.quick:  # the tests' tiny grid: synthesising 4 cases of 64x76x64 takes ~2 s
        config["dataset"]["synthetic"]["shape"] = list(QUICK_SYNTHETIC_SHAPE)
    prepare_data(config)
    write_untrained_teacher(config)
    run = Path(teacher_dir(config, 0, 0))
    cases = load_fold(Path(data_dir(config)) / "splits.json", 0)["test"]
    device = torch.device(opts.device)
    counter = iter(range(10**6))

    def call() -> None:  # a fresh output folder each time: predict_run skips existing files
        predict_run(run, cases, Path(opts.workdir) / f"pred{next(counter)}", device=device,
                    progress=False)

    call()  # warm-up (kernel selection, imports, file system caches)
    cpu: list[float] = []
    wall = interleaved_times({"predict_run": _cpu_timed(call, cpu, [])}, rounds=rounds,
                             warmup=0)["predict_run"]
    per_case = median(wall) / len(cases)
    grid = "x".join(map(str, config["dataset"]["synthetic"]["shape"]))
    row = Row(SECTION, f"predict_run s/case, synthetic {grid} (load, predict, restore, "
              f"write NIfTI)", per_case, "s",
              note=f"{len(cases)} cases per call, model loaded once per call")
    records = [{"network": "teacher", "in_channels": len(config["dataset"]["modalities"]),
                "variant": "predict_run", "round": i, "wall_s": w / len(cases),
                "cpu_s": c / len(cases), "shape": grid}
               for i, (w, c) in enumerate(zip(wall, cpu, strict=True))]
    return row, records, {"cases": len(cases), "grid": grid}


def run(opts: BenchOptions, previous: dict[str, SectionResult]) -> SectionResult:
    """Teacher and one-modality student: kdseg vs MONAI s/case; then ``predict_run`` e2e."""
    del previous  # no other section's numbers are needed
    with scratch_dir(opts, SECTION) as workdir:
        return _run(replace(opts, workdir=workdir))


def _run(opts: BenchOptions) -> SectionResult:
    import torch

    from kdseg.bench.fixtures import bench_config
    from kdseg.config import parse_run_config, teacher_run_config
    from kdseg.data.labels import get_convention
    from kdseg.models.factory import build_network, to_device

    assert opts.workdir is not None
    shape = QUICK_SHAPE if opts.quick else tuple(opts.full_shape)
    rounds = 1 if opts.quick else opts.repeats
    device = torch.device(opts.device)
    config = bench_config(opts, Path(opts.workdir) / "results")
    run_cfg = parse_run_config(teacher_run_config(config, 0, 0))
    num_classes = get_convention(run_cfg.labels).num_classes

    rows: list[Row] = []
    records: list[dict[str, Any]] = []
    meta: dict[str, Any] = {
        "shape": list(shape), "roi": list(run_cfg.train.patch_size),
        "inference": {"overlap": run_cfg.inference.overlap,
                      "sw_batch_size": run_cfg.inference.sw_batch_size,
                      "mode": run_cfg.inference.mode},
        "model": {"filters": list(run_cfg.model.filters), "norm": run_cfg.model.norm},
        "device": opts.device, "rounds": rounds, "threads": torch.get_num_threads(),
        "gpu_paths_measured": device.type == "cuda",
    }
    if device.type != "cuda":
        meta["note"] = ("CUDA-only code paths (bf16 autocast, cudnn.benchmark, pinned "
                        "non-blocking copy) were not measured: device is CPU")
    teacher_channels = len(run_cfg.input_modalities)
    for name, channels in (("teacher", teacher_channels), ("student", 1)):
        torch.manual_seed(0)
        net = to_device(build_network(run_cfg.model, channels, num_classes), device).eval()
        row, recs, net_meta = compare_network(name, net, channels, shape, run_cfg, device,
                                              rounds)
        rows.append(row)
        records += recs
        meta[name] = net_meta
        del net

    row, recs, e2e_meta = predict_run_per_case(opts, config, rounds)
    rows.append(row)
    records += recs
    meta["predict_run"] = e2e_meta
    return SectionResult(rows, pd.DataFrame.from_records(records), meta)
