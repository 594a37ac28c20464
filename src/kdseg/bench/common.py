"""Shared pieces of ``kdseg bench``: options, result rows, timing and the machine description.

Every section of the benchmark (:mod:`kdseg.bench.runner` lists them) is a function
``run(opts, previous) -> SectionResult``. Its :class:`Row` objects go into one summary table;
its ``details`` frame is written as ``<section>.csv``. A row carries a *ratio against a
reference measured in the same process* wherever one exists (plain MONAI, MedPy, ...), and the
goal it is checked against, so the table says at a glance what was met and by how much.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class BenchOptions:
    """What every section reads.

    Attributes:
        out: folder for ``bench.{csv,json,md}`` and each section's ``<section>.csv``.
        config: the workflow config whose model/patch/batch protocol is measured.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        threads: torch (and BLAS/OpenMP) threads, like one workflow job's ``threads``.
        quick: tiny sizes and few repeats: checks that every code path runs (the tests);
            the numbers mean nothing.
        full_shape: the "full-size case" grid ``(X, Y, Z)``; BraTS: 240 x 240 x 155.
        repeats: measured repetitions of the slower sections (inference, evaluation, ...).
        gpu_patch: patch edge for the GPU section (the issue's 128^3), used on CUDA only.
        compile: also time ``torch.compile`` d networks where a section supports it.
        workdir: scratch folder for generated data (a temporary one when ``None``).
    """

    out: Path
    config: Path = Path("config/config.yaml")
    device: str = "cpu"
    threads: int = 1
    quick: bool = False
    full_shape: tuple[int, int, int] = (240, 240, 155)
    repeats: int = 3
    gpu_patch: int = 128
    compile: bool = False
    workdir: Path | None = None


@dataclass
class Row:
    """One line of the summary table.

    ``ratio`` reads the way ``goal`` is written: for a time ``ours / reference`` against a
    "≤" goal; for a speed-up ``reference / ours`` against a "≥" goal. ``met`` is ``None``
    where there is no goal (context figures).
    """

    section: str
    item: str
    value: float
    unit: str
    reference: str = ""
    reference_value: float | None = None
    ratio: float | None = None
    goal: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class SectionResult:
    """A section's summary rows, its detailed measurements and free-form metadata."""

    rows: list[Row]
    details: pd.DataFrame | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@contextmanager
def scratch_dir(opts: BenchOptions, name: str) -> Iterator[Path]:
    """Where a section generates its data: ``opts.workdir`` (the runner gives each section
    its own), or a temporary folder, removed afterwards, when a section is called directly."""
    if opts.workdir is not None:
        yield Path(opts.workdir)
        return
    with tempfile.TemporaryDirectory(prefix=f"kdseg-bench-{name}-") as tmp:
        yield Path(tmp)


def time_ratio_row(section: str, item: str, ours: float, unit: str, reference: str,
                   reference_value: float, max_ratio: float | None = None,
                   note: str = "") -> Row:
    """A row for a time where lower is better: ratio ``ours / reference`` (goal ``≤ max``)."""
    ratio = ours / reference_value if reference_value > 0 else math.nan
    return Row(section, item, ours, unit, reference, reference_value, ratio,
               f"≤ {max_ratio:g}×" if max_ratio is not None else "",
               (ratio <= max_ratio) if max_ratio is not None else None, note)


def speedup_row(section: str, item: str, ours: float, unit: str, reference: str,
                reference_value: float, min_speedup: float | None = None,
                note: str = "") -> Row:
    """A row for a time where the goal is a speed-up: ratio ``reference / ours`` (goal ``≥``)."""
    ratio = reference_value / ours if ours > 0 else math.nan
    return Row(section, item, ours, unit, reference, reference_value, ratio,
               f"≥ {min_speedup:g}×" if min_speedup is not None else "",
               (ratio >= min_speedup) if min_speedup is not None else None, note)


def interleaved_times(variants: Mapping[str, Callable[[], object]], rounds: int,
                      per_round: int = 1, warmup: int = 1,
                      sync: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Wall seconds of each call of each variant, measured round by round.

    Variants alternate within every round, so slow drift of the machine (other jobs, thermal
    state) hits all of them alike and their ratio stays meaningful. ``warmup`` untimed calls
    per variant come first (allocators, oneDNN/cuDNN kernel selection); ``sync`` (e.g.
    ``torch.cuda.synchronize``) runs before and after every timed call.
    """
    sync = sync or (lambda: None)
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            for _ in range(per_round):
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - t0)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_description(device: str) -> dict[str, Any]:
    """Where the numbers were measured: CPU, cores, memory, threads, GPU, versions, git SHA."""
    import torch

    from kdseg.training.runinfo import git_sha, versions

    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "memory_gib": _memory_gib(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "git_sha": git_sha(),
        "versions": versions(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        dev = torch.device(device)
        props = torch.cuda.get_device_properties(dev)
        info.update(gpu=torch.cuda.get_device_name(dev),
                    gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def rows_frame(rows: list[Row]) -> pd.DataFrame:
    return pd.DataFrame([asdict(r) for r in rows], columns=[f for f in Row.__dataclass_fields__])


def format_table(rows: list[Row]) -> str:
    """The summary as a Markdown table (printed, and pasted into docs/performance.md)."""
    def num(v: float | None, digits: int = 4) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "—"
        return f"{v:.{digits}g}"

    lines = ["| section | item | value | reference | ratio | goal | met | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = f"{r.reference} {num(r.reference_value)}" if r.reference else "—"
        met = "—" if r.met is None else ("yes" if r.met else "**no**")
        ratio = f"{num(r.ratio, 3)}×" if r.ratio is not None else "—"
        lines.append(f"| {r.section} | {r.item} | {num(r.value)} {r.unit} | {ref} | {ratio} "
                     f"| {r.goal or '—'} | {met} | {r.note} |")
    return "\n".join(lines)
