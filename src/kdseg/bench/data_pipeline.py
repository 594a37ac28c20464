"""``data_pipeline``: patches/s the loader delivers vs patches/s the training step consumes.

The loader must never be the bottleneck. Measured with kdseg's real
:class:`~kdseg.data.dataset.PatchDataset` and :meth:`~kdseg.training.loop.Trainer.step`
(:mod:`kdseg.bench.fixtures`):

* **delivered**: patches/s out of a ``torch.utils.data.DataLoader`` over the dataset (the
  config's batch size; ``num_workers`` 0, 1 and 2; persistent workers; ``pin_memory`` on CUDA),
  after warm-up (worker start-up and the first memory maps are reported apart). The three
  loaders are alive together and timed in alternating rounds (medians); before each timed
  window the batches a worker prefetched while the others were timed are drained untimed.
* **consumed**: patches/s of the baseline student's (and the teacher's) training step on
  pre-drawn batches, i.e. ``batch_size / step time``.
* **ratio** delivered / consumed (goal ≥ 1: the loader keeps up) and the **workers needed**,
  ``ceil(consumed / per-worker delivery)`` (per-worker: the 1-worker loader).
  With ``num_workers=0`` the loader runs inside the training iteration instead of beside it:
  the fraction of an iteration spent drawing the batch is reported for that case.
* **in-process draw vs MONAI**: seconds per augmented patch of kdseg's stream vs the same
  patches augmented by MONAI's ``Compose`` (the reference the stream is bit-identical to; the
  identity is checked on a few patches here too). ``meta[...]["loader_overhead_s_per_batch"]``:
  what the DataLoader adds per batch to drawing its patches (collation into fresh memory, in
  a worker fresh shared memory, and the hand-over); at 128^3 it, not the dataset, bounds a
  worker's rate.

Two patch sizes: the config's, and ``opts.gpu_patch``^3 (128^3) on a synthetic dataset whose
grid holds it. At the latter only the loader is measured on CPU (a CPU step at 128^3 says
nothing about GPU sizing); the consumption is a GPU step time, from
``previous["train_step"].meta["gpu_step_s"]`` (seconds per step at ``gpu_patch``^3 with the
config's batch size) when the ``train_step`` section measured one, else measured here when the
device is CUDA, else "no GPU step measured". On a machine with few cores, 2 workers compete
with the main process (and each other) for cores: their rate is what this machine gives, not
twice the 1-worker rate.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator
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

SECTION = "data_pipeline"
WORKERS: tuple[int, ...] = (0, 1, 2)
PREFETCH = 2  # DataLoader's default prefetch_factor: batches a worker has ready in advance
QUICK_PATCH, QUICK_GPU_PATCH = (16, 16, 16), 20
QUICK_GRID = (28, 28, 28)  # holds QUICK_GPU_PATCH^3 after the brain crop


def run(opts: BenchOptions, previous: dict[str, SectionResult]) -> SectionResult:
    """Measure both patch sizes; rows, one details line per measurement, meta for ``scaling``."""
    with scratch_dir(opts, SECTION) as workdir:
        return _run(opts, previous, workdir)


def _run(opts: BenchOptions, previous: dict[str, SectionResult], workdir: Path) -> SectionResult:
    from kdseg.bench.fixtures import make_trainer, prepare_data

    cuda = opts.device.startswith("cuda")
    rows: list[Row] = []
    details: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"device": opts.device, "workers": list(WORKERS)}

    # --- the config's patch size: loader and training steps
    config = _config(opts, workdir / "config_patch", None)
    prepare_data(config)
    trainer = make_trainer(config, "flair", "baseline")
    patch = tuple(trainer.cfg.train.patch_size)
    batch = int(trainer.cfg.train.batch_size)
    label = "x".join(map(str, patch))
    n_small = 10 if opts.quick else 150
    rates = _loader_rates(trainer.data, batch, cuda, n_batches=n_small,
                          rounds=_rounds(opts), details=details, patch=label)
    teacher = make_trainer(config, "flair", "teacher")
    steps = _step_times(
        {"baseline": trainer, "teacher": teacher}, opts,
        n_steps=2 if opts.quick else 5,
    )
    for method, seconds in steps.items():
        details.append(_detail(label, "train_step", method, None, batch,
                               batch / median(seconds), seconds))
    consumed = batch / median(steps["baseline"])
    consumed_teacher = batch / median(steps["teacher"])
    rows += _loader_rows(label, rates, consumed, batch / consumed,
                         f"baseline step ({opts.device})")
    rows.append(Row(SECTION, f"teacher step {label} consumes", consumed_teacher, "patches/s",
                    note=f"{opts.device}, batch {batch}; for context"))
    draw = _monai_comparison(trainer.data, n=10 if opts.quick else 200, rounds=_rounds(opts))
    rows.append(_draw_row(label, draw, details))
    meta["config_patch"] = {
        "patch": list(patch), "batch_size": batch,
        "delivered_per_s": {w: median(r) for w, r in rates.items()},
        "consumed_per_s": {"baseline": consumed, "teacher": consumed_teacher},
        "workers_needed": _workers_needed(consumed, median(rates[1])),
        "in_process_fraction": _fraction(batch / median(rates[0]), batch / consumed),
        "identical_to_monai": draw["identical"],
        "monai_speedup": median(draw["times"]["monai"]) / median(draw["times"]["kdseg"]),
        "loader_overhead_s_per_batch": _overhead(rates, batch, median(draw["times"]["kdseg"])),
    }
    del trainer, teacher

    # --- the GPU patch size: the loader only (the step: a GPU's, if one was measured)
    edge = QUICK_GPU_PATCH if opts.quick else opts.gpu_patch  # quick: only the code path
    big_config = _config(opts, workdir / "gpu_patch", (edge,) * 3)
    prepare_data(big_config)
    big = make_trainer(big_config, "flair", "baseline")
    big_label = f"{edge}x{edge}x{edge}"
    big_rates = _loader_rates(big.data, batch, cuda, n_batches=4 if opts.quick else 20,
                              rounds=_rounds(opts), details=details, patch=big_label)
    big_draw = _monai_comparison(big.data, n=2 if opts.quick else 10, rounds=_rounds(opts))
    rows.append(_draw_row(big_label, big_draw, details))
    gpu_step_s, source = _gpu_step(previous, big, opts)
    if gpu_step_s is not None:
        details.append(_detail(big_label, "train_step", "baseline", None, batch,
                               batch / gpu_step_s, [gpu_step_s]))
        rows += _loader_rows(big_label, big_rates, batch / gpu_step_s, gpu_step_s,
                             f"GPU baseline step ({source})")
    else:
        rows += [Row(SECTION, _loader_item(big_label, w), median(r), "patches/s",
                     note="no GPU step measured" + (" (per worker)" if w == 1 else ""))
                 for w, r in big_rates.items()]
    meta["gpu_patch"] = {
        "patch": [edge] * 3, "batch_size": batch,
        "delivered_per_s": {w: median(r) for w, r in big_rates.items()},
        "gpu_step_s": gpu_step_s, "gpu_step_source": source,
        "workers_needed": (_workers_needed(batch / gpu_step_s, median(big_rates[1]))
                           if gpu_step_s else None),
        "in_process_fraction": (_fraction(batch / median(big_rates[0]), gpu_step_s)
                                if gpu_step_s else None),
        "identical_to_monai": big_draw["identical"],
        "monai_speedup": (median(big_draw["times"]["monai"])
                          / median(big_draw["times"]["kdseg"])),
        "loader_overhead_s_per_batch": _overhead(big_rates, batch,
                                                 median(big_draw["times"]["kdseg"])),
    }
    return SectionResult(rows, pd.DataFrame(details, columns=DETAIL_COLUMNS), meta)


DETAIL_COLUMNS = ["patch", "what", "method", "num_workers", "batch_size", "patches_per_s",
                  "s_median", "s_min", "s_max", "n", "startup_s"]
"""``what``: ``loader`` (``s_*``: seconds per timed window of batches), ``train_step``
(seconds per step), ``in_process_draw_kdseg`` / ``_monai`` (seconds per patch)."""


def _config(opts: BenchOptions, results_dir: Path,
            patch: tuple[int, int, int] | None) -> dict[str, Any]:
    """The benchmark config; in quick mode a tiny grid and patch (seconds, not minutes)."""
    from kdseg.bench.fixtures import bench_config

    if opts.quick:  # one tiny dataset (in the first results dir) serves both patch sizes
        config = bench_config(opts, results_dir.with_name("config_patch"), patch_size=None)
        config["train"]["patch_size"] = list(patch or QUICK_PATCH)
        config["dataset"]["synthetic"]["shape"] = list(QUICK_GRID)
        return config
    return bench_config(opts, results_dir, patch_size=patch)


def _rounds(opts: BenchOptions) -> int:
    return 2 if opts.quick else max(3, opts.repeats)


def _loader_rates(dataset: Any, batch: int, pin: bool, n_batches: int, rounds: int,
                  details: list[dict[str, Any]], patch: str) -> dict[int, list[float]]:
    """Patches/s of a DataLoader with each of :data:`WORKERS` workers, one value per round.

    All loaders live at once and are timed in turn, round after round, so that drift of a
    shared machine hits them alike. A window times ``n_batches`` batches after draining the
    ``PREFETCH * workers`` batches prepared while the others were being timed.
    """
    import torch

    loaders: dict[int, Iterator[Any]] = {}
    startup: dict[int, float] = {}
    for w in WORKERS:
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=w,
                                             persistent_workers=w > 0, pin_memory=pin,
                                             prefetch_factor=PREFETCH if w else None)
        t0 = time.perf_counter()
        loaders[w] = iter(loader)
        next(loaders[w])  # worker start-up, first memory maps of the cases
        startup[w] = time.perf_counter() - t0
        for _ in range(max(2, n_batches // 5)):  # warm-up: every case opened, caches filled
            next(loaders[w])
    windows: dict[int, list[float]] = {w: [] for w in WORKERS}
    for _ in range(rounds):
        for w, stream in loaders.items():
            for _ in range(PREFETCH * w):
                next(stream)
            t0 = time.perf_counter()
            for _ in range(n_batches):
                next(stream)
            windows[w].append(time.perf_counter() - t0)
    loaders.clear()  # ends the persistent workers
    rates = {w: [n_batches * batch / s for s in seconds] for w, seconds in windows.items()}
    for w in WORKERS:
        details.append(_detail(patch, "loader", "", w, batch, median(rates[w]), windows[w],
                               n=n_batches, startup_s=startup[w]))
    return rates


def _step_times(trainers: dict[str, Any], opts: BenchOptions,
                n_steps: int) -> dict[str, list[float]]:
    """Seconds per training step of each trainer on its own pre-drawn batches (pinned on
    CUDA, as the loop's ``pin_memory`` loader gives them), interleaved, medians per call."""
    import torch

    from kdseg.bench.fixtures import draw_batches

    cuda = opts.device.startswith("cuda")
    calls: dict[str, Callable[[], object]] = {}
    for name, trainer in trainers.items():
        batches = draw_batches(trainer, 3)
        if cuda:
            batches = [tuple(t.pin_memory() for t in b) for b in batches]
        calls[name] = _stepper(trainer, batches)
    sync = torch.cuda.synchronize if cuda else None
    return interleaved_times(calls, rounds=_rounds(opts), per_round=n_steps,
                             warmup=1 if opts.quick else 2, sync=sync)


def _stepper(trainer: Any, batches: list[tuple[Any, ...]]) -> Callable[[], object]:
    """One training step per call, on the batches in turn."""
    cycle = itertools.cycle(batches)
    return lambda: trainer.step(*next(cycle))


def _gpu_step(previous: dict[str, SectionResult], trainer: Any,
              opts: BenchOptions) -> tuple[float | None, str]:
    """Seconds per GPU training step at the GPU patch size and the config's batch size:
    ``train_step``'s measurement, or one measured here on CUDA; ``(None, reason)`` on CPU."""
    result = previous.get("train_step")
    meta = result.meta if result is not None else {}
    edge = trainer.cfg.train.patch_size[0]
    if meta.get("gpu_step_s") is not None and meta.get("gpu_patch", edge) == edge:
        return float(meta["gpu_step_s"]), "train_step section"
    if opts.device.startswith("cuda"):
        return median(_step_times({"baseline": trainer}, opts, 3)["baseline"]), "measured here"
    return None, "no GPU step measured"


def _monai_stream(dataset: Any, seed: int) -> Iterator[tuple[Any, Any]]:
    """The reference: ``dataset``'s patches augmented by MONAI's transforms, as kdseg did before
    its own :class:`~kdseg.data.dataset.Augmentation` (same draws, same seeding)."""
    import torch
    from monai.data import MetaTensor

    from kdseg.data.dataset import monai_augmentation

    augment = monai_augmentation()
    rng = np.random.default_rng([seed, 0, 0])
    augment.set_random_state(seed=int(rng.integers(2**31)))

    def plain(x: Any) -> torch.Tensor:
        return torch.as_tensor(x.as_tensor() if isinstance(x, MetaTensor) else x).contiguous()

    while True:
        patch = augment(dataset.sample(rng))
        yield plain(patch["image"]), plain(patch["label"])


def _monai_comparison(dataset: Any, n: int, rounds: int) -> dict[str, Any]:
    """Seconds per augmented patch, kdseg's stream vs MONAI's, in this process; and whether
    their first patches are identical (they must be: same seed, same draws)."""
    import torch

    from kdseg.data.dataset import PatchDataset

    fresh = PatchDataset(dataset.dir, dataset.cases[:dataset.n_first], dataset.patch_size,
                         dataset.foreground_prob, dataset.seed)
    identical = all(
        all(torch.equal(a, b) for a, b in zip(ours, ref, strict=True))
        for ours, ref in itertools.islice(zip(iter(fresh), _monai_stream(fresh, fresh.seed),
                                              strict=True), 8))
    ours, ref = iter(fresh), _monai_stream(fresh, fresh.seed)
    times = interleaved_times({"kdseg": lambda: next(ours), "monai": lambda: next(ref)},
                              rounds=rounds * n, warmup=3)
    return {"identical": identical, "times": times}


def _draw_row(label: str, draw: dict[str, Any], details: list[dict[str, Any]]) -> Row:
    """The in-process kdseg-vs-MONAI row (goal: not slower); its times go to ``details``."""
    details += [_detail(label, f"in_process_draw_{k}", "", 0, 1, 1 / median(v), v)
                for k, v in draw["times"].items()]
    return speedup_row(SECTION, f"augmented patch {label}, in-process",
                       median(draw["times"]["kdseg"]), "s", "MONAI Compose",
                       median(draw["times"]["monai"]), min_speedup=1.0,
                       note="same patches, bit-identical" if draw["identical"]
                       else "**patches differ from MONAI's**")


def _loader_rows(label: str, rates: dict[int, list[float]], consumed: float, step_s: float,
                 reference: str) -> list[Row]:
    """A row per worker count (delivered vs consumed), then the workers needed."""
    rows = []
    per_worker = median(rates[1])
    for w, values in rates.items():
        delivered = median(values)
        ratio = delivered / consumed
        if w == 0:  # in the training thread: it adds to the step instead of running beside it
            share = _fraction(1 / delivered, 1 / consumed)
            rows.append(Row(SECTION, _loader_item(label, w), delivered, "patches/s",
                            reference, consumed, ratio, "", None,
                            f"in-process: drawing is {100 * share:.1f} % of each iteration"))
        else:
            rows.append(Row(SECTION, _loader_item(label, w), delivered, "patches/s",
                            reference, consumed, ratio, "≥ 1×", ratio >= 1,
                            "per worker" if w == 1 else f"{delivered / per_worker:.2f}× one "
                            "worker"))
    rows.append(Row(SECTION, f"workers needed {label}", _workers_needed(consumed, per_worker),
                    "workers", note=f"ceil({consumed:.3g} consumed / {per_worker:.3g} per "
                    f"worker patches/s); step {step_s * 1000:.3g} ms"))
    return rows


def _overhead(rates: dict[int, list[float]], batch: int, draw_s: float) -> dict[int, float]:
    """Seconds per batch the DataLoader adds to drawing its patches, per worker count: the
    collation (a fresh batch tensor; in a worker, fresh shared memory) and the hand-over. At
    128^3 this, not the dataset, bounds a worker's rate."""
    return {w: batch / median(r) - batch * draw_s for w, r in rates.items()}


def _loader_item(label: str, workers: int) -> str:
    return f"loader {label}, {workers} worker{'' if workers == 1 else 's'}"


def _workers_needed(consumed: float, per_worker: float) -> int:
    return max(1, math.ceil(consumed / per_worker)) if per_worker > 0 else -1


def _fraction(draw_s: float, step_s: float) -> float:
    """Share of a ``num_workers=0`` iteration (draw, then step) spent drawing."""
    return draw_s / (draw_s + step_s)


def _detail(patch: str, what: str, method: str, workers: int | None, batch: int, rate: float,
            seconds: list[float], n: int | None = None,
            startup_s: float | None = None) -> dict[str, Any]:
    return {"patch": patch, "what": what, "method": method, "num_workers": workers,
            "batch_size": batch, "patches_per_s": rate, "s_median": median(seconds),
            "s_min": min(seconds), "s_max": max(seconds), "n": n or len(seconds),
            "startup_s": startup_s}
