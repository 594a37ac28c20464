"""``preprocess``: seconds and peak memory per full-size case, on one core.

Synthetic cases of ``opts.full_shape`` (BraTS: 4 modalities of 240 x 240 x 155 plus a label
map; generated once per work folder, a cache that later runs extend) go through kdseg's real
preprocessing in a child process pinned to one core with one BLAS/OpenMP thread, like one
workflow job. Measured:

* seconds per case of one whole-dataset run (child-measured wall time / N; interpreter start
  and imports excluded) and, in a second child that preprocesses the cases one at a time, the
  per-case distribution; the goal is ≤ 2 s per case on one core (``docs/datasets.md``);
* peak RSS of each child: its own ``VmHWM`` (``ru_maxrss`` of a forked child also counts the
  parent's RSS at the fork, see :func:`vm_hwm_mib`), next to the child's RSS after its imports;
* bytes on disk per case, of the input ``.nii.gz`` files and of the preprocessed output;
* the training reader's private memory (``RssAnon``: without the page cache behind its memory
  maps) after drawing ``gpu_patch``^3 patches the way training does from 1 case, then from all N
  cases, in one child: it must not grow with N (goal ≤ 1.1×);
* the reference, in this process pinned to the same core: nibabel just reading one case's four
  modalities and label (``nib.load(p).get_fdata(dtype=np.float32)``), and the ratio
  "preprocess / plain read". The files are in the page cache for both (warm-cache figures).

Case generation time is reported but is not the measured quantity.

Caveat on the synthetic geometry: the synthetic head fills its grid (the field of view is the
brain's bounding box plus 4 mm, i.e. about 0.64 x 0.79 x 1.05 mm voxels at BraTS's shape), so
the brain crop keeps 85-95 % of the voxels, whereas real BraTS brains at 1 mm crop to roughly
140 x 170 x 140 (about 40 %). Reading costs the same; the work done on the crop (normalisation,
writing) and the output size are overstated about twofold. The rows show the crop fraction.

``benchmarks/preprocess.py`` runs the same measurement with its own case count and a cache in
``results/bench``. The children are this module run as a script (``python -m
kdseg.bench.preprocess --child MODE ...``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from kdseg.bench.common import BenchOptions, Row, SectionResult, median, scratch_dir
from kdseg.runtime import THREAD_ENV_VARS

SECTION = "preprocess"
MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
SEED = 0
GOAL_SECONDS_PER_CASE = 2.0
"""docs/datasets.md: preprocessing takes at most 2 s per full-size case on one core."""
GOAL_READER_GROWTH = 1.1
"""The training reader's private memory with all N cases open / with one case open."""
FULL_CASES = 6
QUICK_CASES, QUICK_SHAPE, QUICK_PATCH = 2, (32, 36, 32), 16
# One thread per native library, as in one workflow job; set before the child imports numpy.
THREAD_ENV = {name: "1" for name in THREAD_ENV_VARS}
MIB = 1024.0**2


@dataclass(frozen=True)
class Plan:
    """What :func:`measure` does.

    Attributes:
        cases: number of synthetic cases.
        shape: their grid ``(X, Y, Z)``.
        data: cache folder of the generated raw cases (reused, extended as needed).
        out: preprocessing output folder, wiped before a run.
        cpu: the core the children (and the plain-read reference) are pinned to.
        per_case: also run the case-by-case child (the per-case distribution).
        read_cases: cases timed for the plain nibabel read reference.
        reader_patch: patch edge of the training-reader measurement.
    """

    cases: int
    shape: tuple[int, int, int]
    data: Path
    out: Path
    cpu: int
    per_case: bool = True
    read_cases: int = 3
    reader_patch: int = 128


def default_cpu() -> int:
    """The highest core this process may use (the lowest tends to take the interrupts)."""
    return max(os.sched_getaffinity(0))


def run(opts: BenchOptions, previous: dict[str, SectionResult]) -> SectionResult:
    """Measure :data:`FULL_CASES` full-size cases (quick: 2 tiny ones); see the module doc."""
    with scratch_dir(opts, SECTION) as workdir:
        return _run(opts, workdir)


def _run(opts: BenchOptions, workdir: Path) -> SectionResult:
    shape = QUICK_SHAPE if opts.quick else tuple(opts.full_shape)
    plan = Plan(cases=QUICK_CASES if opts.quick else FULL_CASES,
                shape=shape,  # type: ignore[arg-type]
                data=workdir / f"raw_{'x'.join(map(str, shape))}", out=workdir / "out",
                cpu=default_cpu(), read_cases=1 if opts.quick else 3,
                reader_patch=QUICK_PATCH if opts.quick else opts.gpu_patch)
    results = measure(plan)
    return SectionResult(summary_rows(results), details_frame(results), results)


# ---------------------------------------------------------------------------------------------
# Measurement (parent)
# ---------------------------------------------------------------------------------------------


def measure(plan: Plan, log: bool = True) -> dict[str, Any]:
    """Generate (what is missing), time, and collect everything the rows are made of."""
    def say(message: str) -> None:
        if log:
            print(f"[kdseg bench] preprocess: {message}", file=sys.stderr, flush=True)

    if plan.cpu not in os.sched_getaffinity(0):
        raise ValueError(f"core {plan.cpu} is not among the allowed cores "
                         f"{sorted(os.sched_getaffinity(0))}")
    n = plan.cases
    _wipe(plan.out, plan.data)
    folders, missing = case_folders(plan.data, n)
    gen_s = 0.0
    if missing:
        say(f"generating {missing} synthetic case(s) of {plan.shape} in {plan.data} ...")
        start = time.perf_counter()
        generate(plan.data, n, plan.shape)
        gen_s = time.perf_counter() - start
    case_ids = [f.name for f in folders]
    with tempfile.TemporaryDirectory(prefix="kdseg-bench-view-") as tmp:
        # A folder holding exactly the first n cases (symlinks), whatever else the cache holds.
        view = Path(tmp)
        for folder in folders:
            (view / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
        say(f"plain nibabel read of {min(n, plan.read_cases)} case(s) ...")
        read_s = plain_read_seconds(folders[: plan.read_cases], plan.cpu)
        say(f"preprocessing {n} case(s) on core {plan.cpu} ...")
        whole = run_child("dataset", view, plan.out / "dataset", plan.cpu)
        per_case = None
        if plan.per_case:
            say("again, case by case ...")
            per_case = run_child("per-case", view, plan.out / "per_case", plan.cpu)
    say("training reader: patches from 1 case, then from all cases ...")
    reader = run_child("train-read", plan.out / "dataset", plan.out, plan.cpu,
                       extra=["--patch", str(plan.reader_patch)])
    per_case_s = whole["seconds"] / n
    return {
        "pinned_cpu": plan.cpu,
        "cases": n,
        "case_shape": [len(MODALITIES), *plan.shape],
        "generation_seconds": gen_s,
        "generated_cases": missing,
        "whole_run": whole,
        "per_case_run": per_case,
        "s_per_case": per_case_s,  # read by the scaling section
        "peak_rss_mib": whole["peak_rss_mib"],
        "plain_read_seconds": dict(zip(case_ids, read_s, strict=False)),
        "preprocess_over_plain_read": per_case_s / statistics.median(read_s),
        "input_bytes": {c: folder_bytes(case_files(f)) for c, f in zip(case_ids, folders,
                                                                         strict=True)},
        "output_bytes": {c: output_bytes(plan.out / "dataset", c) for c in case_ids},
        "crop_fraction": {c: crop_fraction(plan.out / "dataset", c) for c in case_ids},
        "training_reader": reader,
    }


def summary_rows(results: dict[str, Any]) -> list[Row]:
    """The section's rows from :func:`measure`'s results."""
    n = results["cases"]
    shape = "x".join(map(str, results["case_shape"]))
    whole = results["whole_run"]
    per_case_s = results["s_per_case"]
    read_s = statistics.median(results["plain_read_seconds"].values())
    kept = statistics.fmean(results["crop_fraction"].values())
    caveat = f"crop keeps {100 * kept:.0f} % of the voxels (synthetic head; real BraTS ≈ 40 %)"
    rows = [Row(SECTION, f"s per case {shape} (whole run / {n}, 1 core)", per_case_s, "s",
                "nibabel read of a case", read_s, per_case_s / read_s,
                f"≤ {GOAL_SECONDS_PER_CASE:g} s", per_case_s <= GOAL_SECONDS_PER_CASE,
                f"ratio: preprocess / plain read; {caveat}")]
    per_case = results["per_case_run"]
    if per_case is not None:
        values = list(per_case["case_seconds"].values())
        rows.append(Row(SECTION, "s per case (one at a time), median", median(values), "s",
                        note=f"min {min(values):.3g} / max {max(values):.3g} s"))
    rows.append(Row(SECTION, f"peak memory, {n} cases (whole run)", whole["peak_rss_mib"], "MiB",
                    "after imports", whole["rss_after_imports_mib"],
                    whole["peak_rss_mib"] / whole["rss_after_imports_mib"],
                    note="child's VmHWM; about one case, whatever N"))
    if per_case is not None:
        rows.append(Row(SECTION, "peak memory, one case at a time", per_case["peak_rss_mib"],
                        "MiB", "after imports", per_case["rss_after_imports_mib"],
                        per_case["peak_rss_mib"] / per_case["rss_after_imports_mib"]))
    out_mib = statistics.fmean(results["output_bytes"].values()) / MIB
    in_mib = statistics.fmean(results["input_bytes"].values()) / MIB
    rows.append(Row(SECTION, "output MiB per case (.npy + .json)", out_mib, "MiB",
                    "input .nii.gz", in_mib, out_mib / in_mib,
                    note=f"crop keeps {100 * kept:.0f} % of the voxels"))
    reader = results["training_reader"]
    one, all_ = reader["rss_anon_one_case_mib"], reader["rss_anon_all_cases_mib"]
    rows.append(Row(SECTION, f"training reader private memory, {reader['cases']} cases open",
                    all_, "MiB", "1 case open", one, all_ / one, f"≤ {GOAL_READER_GROWTH:g}×",
                    all_ / one <= GOAL_READER_GROWTH,
                    f"RssAnon; {reader['patch']}^3 patches, "
                    f"{1000 * reader['seconds_per_patch']:.3g} ms each (un-augmented)"))
    return rows


def details_frame(results: dict[str, Any]) -> pd.DataFrame:
    """One line per case: seconds alone (case-by-case run), plain-read seconds, sizes, crop."""
    per_case = (results["per_case_run"] or {}).get("case_seconds", {})
    return pd.DataFrame([
        {"case": case, "preprocess_s": per_case.get(case),
         "plain_read_s": results["plain_read_seconds"].get(case),
         "input_mib": results["input_bytes"][case] / MIB,
         "output_mib": results["output_bytes"][case] / MIB,
         "crop_fraction": results["crop_fraction"][case]}
        for case in results["input_bytes"]
    ], columns=["case", "preprocess_s", "plain_read_s", "input_mib", "output_mib",
                "crop_fraction"])


def run_child(mode: str, root: Path, out: Path, cpu: int,
              extra: Sequence[str] = ()) -> dict[str, Any]:
    """Run this module as a child pinned to ``cpu`` (by itself) with one thread per native
    library; returns its JSON result plus its wall time including interpreter start-up and
    its CPU times from ``os.wait4`` (this child alone, whereas ``RUSAGE_CHILDREN`` is the
    maximum over all children waited for). The child's ``ru_maxrss`` is kept in the JSON only:
    it includes whatever RSS this process had when it forked; the peak reported is the
    child's ``VmHWM``."""
    os.sync()  # flush dirty pages (generated cases, a wiped output) before timing
    with tempfile.TemporaryDirectory(prefix="kdseg-bench-") as tmp:
        result_path = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "kdseg.bench.preprocess", "--child", mode, "--root",
               str(root), "--out", str(out), "--result", str(result_path), "--cpu", str(cpu),
               *extra]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env={**os.environ, **THREAD_ENV})
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"preprocess benchmark child {mode!r} failed with exit code "
                               f"{proc.returncode}")
        result = json.loads(result_path.read_text())
    result.update(wall_incl_startup_s=wall, ru_maxrss_mib=usage.ru_maxrss / 1024.0,
                  cpu_user_s=usage.ru_utime, cpu_sys_s=usage.ru_stime)
    return result


def case_folders(data: Path, n: int) -> tuple[list[Path], int]:
    """Folders of the first ``n`` synthetic cases in ``data`` and how many are incomplete."""
    from kdseg.data.synthetic import case_paths

    missing = sum(not all(p.exists() for p in case_paths(data, i).values()) for i in range(n))
    return [case_paths(data, i)["seg"].parent for i in range(n)], missing


def generate(data: Path, n: int, shape: tuple[int, int, int]) -> None:
    """Write the first ``n`` synthetic cases of ``shape`` into ``data`` (missing ones only).

    A cached dataset with fewer cases is extended: case ``i`` depends only on the seed and
    ``i``, never on ``n_cases`` (kdseg.data.synthetic), so the manifest's ``n_cases`` is set to
    ``n`` and the missing cases are written. A cache made with other settings is refused by
    ``synthesize_dataset``.
    """
    from dataclasses import asdict

    from kdseg.data.synthetic import (
        GENERATOR_VERSION,
        MANIFEST_NAME,
        SyntheticSpec,
        synthesize_dataset,
    )
    from kdseg.fileio import write_text_atomic

    spec = SyntheticSpec(n_cases=n, shape=shape, seed=SEED)
    data.mkdir(parents=True, exist_ok=True)
    manifest = data / MANIFEST_NAME
    if manifest.exists():
        def plain(d: dict[str, Any]) -> dict[str, Any]:
            return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()
                    if k != "n_cases"}

        stored = json.loads(manifest.read_text())
        if (plain(stored.get("spec", {})) == plain(asdict(spec))
                and stored.get("generator_version") == GENERATOR_VERSION):
            stored["spec"]["n_cases"] = n
            stored["complete"] = False
            write_text_atomic(json.dumps(stored, indent=2) + "\n", manifest)
    synthesize_dataset(data, spec, progress=False)


def case_files(folder: Path) -> list[Path]:
    """The four modality files and the label of one case, in a fixed order."""
    return [folder / f"{folder.name}_{key}.nii.gz" for key in (*MODALITIES, "seg")]


def plain_read_seconds(folders: Sequence[Path], cpu: int) -> list[float]:
    """Seconds to read each case's five files with nibabel as float32, pinned to ``cpu``.

    Two passes over ``folders``; the second is returned (the first one warms up).
    """
    import nibabel as nib
    import numpy as np

    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        for _ in range(2):
            seconds = []
            for folder in folders:
                start = time.perf_counter()
                for path in case_files(folder):
                    nib.load(path).get_fdata(dtype=np.float32)
                seconds.append(time.perf_counter() - start)
    finally:
        os.sched_setaffinity(0, allowed)
    return seconds


def folder_bytes(paths: Sequence[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def crop_fraction(out: Path, case_id: str) -> float:
    """Fraction of the original voxels kept by the crop, from the case record."""
    record = json.loads((out / f"{case_id}.json").read_text())
    kept = [stop - start for start, stop in record["bbox"]]
    total = record["original_shape"]
    return kept[0] * kept[1] * kept[2] / (total[0] * total[1] * total[2])


def output_bytes(out: Path, case_id: str) -> int:
    """Bytes of ``<case>_image.npy``, ``<case>_label.npy`` and ``<case>.json``."""
    return folder_bytes([out / f"{case_id}_image.npy", out / f"{case_id}_label.npy",
                         out / f"{case_id}.json"])


def _wipe(out: Path, data: Path) -> None:
    """Remove ``out`` unless it is (or contains) the data cache or a filesystem root."""
    out_r, data_r = out.resolve(), data.resolve()
    if out_r == Path(out_r.anchor) or data_r == out_r or data_r.is_relative_to(out_r):
        raise ValueError(f"output folder {out} would wipe the data {data}; choose another")
    shutil.rmtree(out, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Child: pinned to one core, runs the preprocessing, writes its measurements as JSON
# ---------------------------------------------------------------------------------------------


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no {key} in /proc/self/status")


def vm_hwm_mib() -> float:
    """This process's peak resident set size (``VmHWM``) in MiB.

    Unlike ``ru_maxrss``, ``VmHWM`` belongs to the address space made by ``exec``, so it does
    not include the RSS the parent had when it forked this process (Linux carries that over
    into ``ru_maxrss``: a child of a 1.7 GB parent reports >= 1.7 GB whatever it does).
    """
    return _status_mib("VmHWM")


def rss_anon_mib() -> float:
    """Private anonymous memory (``RssAnon``) in MiB: what a process really holds, without the
    file-backed pages of memory maps (page cache the kernel can drop at any time)."""
    return _status_mib("RssAnon")


def run_preprocessing(root: Path, out: Path) -> None:
    """The preprocessing call that is measured: every case under ``root`` into ``out``."""
    from kdseg.data.labels import get_convention
    from kdseg.data.preprocess import preprocess_dataset

    preprocess_dataset(root, out, MODALITIES, get_convention("brats"), margin=2, progress=False)


def train_read(preprocessed: Path, patch: int, patches_per_case: int = 4) -> dict[str, Any]:
    """Draw patches the way training does (``PatchDataset``, memory-mapped arrays) from one
    case, then from every case; the reader's private memory after each."""
    import numpy as np

    from kdseg.data.dataset import PatchDataset

    cases = sorted(p.name.removesuffix(".json") for p in preprocessed.glob("*.json")
                   if p.name != "dataset.json")
    before = rss_anon_mib()
    data = PatchDataset(preprocessed, cases, (patch,) * 3, 0.5, seed=0)
    rng = np.random.default_rng(0)
    rss: list[float] = []
    start = time.perf_counter()
    for stop in (1, len(cases)):
        for index in range(stop):
            for _ in range(patches_per_case):
                data.sample(rng, index)
        rss.append(rss_anon_mib())
    seconds = time.perf_counter() - start
    drawn = (1 + len(cases)) * patches_per_case
    return {"cases": len(cases), "patch": patch, "patches": drawn,
            "seconds_per_patch": seconds / drawn, "rss_anon_before_mib": before,
            "rss_anon_one_case_mib": rss[0], "rss_anon_all_cases_mib": rss[1]}


def _child_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m kdseg.bench.preprocess",
                                description="a child of the preprocess benchmark section")
    p.add_argument("--child", required=True, choices=["dataset", "per-case", "train-read"])
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--result", type=Path, required=True)
    p.add_argument("--cpu", type=int, required=True)
    p.add_argument("--patch", type=int, default=128)
    args = p.parse_args(argv)
    os.sched_setaffinity(0, {args.cpu})  # first, before any library starts threads
    if args.child == "train-read":
        result = train_read(args.root, args.patch)
        result["peak_rss_mib"] = vm_hwm_mib()
        args.result.write_text(json.dumps(result))
        return 0
    import importlib

    for module in ("numpy", "scipy.ndimage", "nibabel", "pandas", "kdseg.data.labels",
                   "kdseg.data.preprocess"):
        importlib.import_module(module)  # imports are not part of the measurement
    result: dict[str, Any] = {"affinity": sorted(os.sched_getaffinity(0)),
                              "rss_after_imports_mib": vm_hwm_mib()}
    if args.child == "dataset":
        start = time.perf_counter()
        run_preprocessing(args.root, args.out)
        result["seconds"] = time.perf_counter() - start
    else:
        cases = sorted(p for p in args.root.iterdir() if p.is_dir())
        seconds = []
        with tempfile.TemporaryDirectory(prefix="kdseg-bench-case-") as tmp:
            for case in cases:
                view = Path(tmp) / case.name
                view.mkdir()
                (view / case.name).symlink_to(case.resolve(), target_is_directory=True)
                start = time.perf_counter()
                run_preprocessing(view, args.out / case.name)
                seconds.append(time.perf_counter() - start)
                # Sizes come from the whole run; do not keep a second copy on disk (50 cases
                # of the full-size synthetic data are ~7 GB).
                shutil.rmtree(args.out / case.name)
        result["case_seconds"] = dict(zip([c.name for c in cases], seconds, strict=True))
        result["seconds"] = sum(seconds)
    result["peak_rss_mib"] = vm_hwm_mib()
    args.result.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(_child_main(sys.argv[1:]))
