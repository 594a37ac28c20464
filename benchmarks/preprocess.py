"""Preprocessing time and peak memory on full-size BraTS-sized cases, on one core.

Generates (once; cached in ``--data``) synthetic cases of BraTS size, 4 modalities of
240 x 240 x 155 voxels plus a label map, and runs kdseg's real preprocessing on them in a child
process pinned to one core with one BLAS/OpenMP thread, like one workflow job. Measured:

* seconds per case of one whole-dataset run (child-measured wall time / N; interpreter start
  and imports excluded) and, in a second child run that preprocesses the cases one at a time,
  the per-case distribution;
* peak RSS of each child: its own ``VmHWM`` (``ru_maxrss`` of a forked child also counts the
  parent's RSS at the fork, see :func:`vm_hwm_mib`), next to the child's RSS after its
  imports; cases are generated in a separate process so that this one stays small;
* bytes on disk per case, of the input ``.nii.gz`` files and of the preprocessed output;
* the training reader's private memory (``RssAnon``: without the page cache behind its memory
  maps) after drawing 128^3 patches the way training does from 2 cases, then from all N cases:
  it must not grow with N;
* for context, the time nibabel takes here, on the same core, just to read one case's four
  modalities and label (``nib.load(p).get_fdata(dtype=np.float32)``), and the ratio
  "preprocess / plain read". The files are in the page cache for both (warm-cache figures).

Case generation time is reported but is not the measured quantity.

Caveat on the synthetic geometry: the synthetic head fills its grid (the field of view is the
brain's bounding box plus 4 mm, i.e. about 0.64 x 0.79 x 1.05 mm voxels at this shape), so the
brain crop keeps 85-95 % of the voxels, whereas real BraTS brains at 1 mm crop to roughly
140 x 170 x 140 (about 40 %). Reading costs the same; the work done on the crop (normalisation,
writing) and the output size are overstated about twofold. The table shows the crop fraction.

Usage::

    .venv/bin/python benchmarks/preprocess.py                    # 10 cases
    .venv/bin/python benchmarks/preprocess.py --cases 50 --json results/bench/preprocess.json

Prints a table; ``--json`` also writes the numbers with a machine description.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODALITIES = ("t1", "t1ce", "t2", "flair")
BRATS_SHAPE = (240, 240, 155)
SEED = 0
# One thread per native library, as in one workflow job; set before the child imports numpy.
THREAD_ENV = {
    name: "1"
    for name in (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "BLIS_NUM_THREADS",
        "NUMEXPR_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
    )
}


def run_preprocessing(root: Path, out: Path) -> None:
    """The preprocessing call that is measured: every case under ``root`` into ``out``.

    The one place to adapt when the preprocessing API changes.
    """
    from kdseg.data.labels import get_convention
    from kdseg.data.preprocess import preprocess_dataset

    preprocess_dataset(
        root, out, ("t1", "t1ce", "t2", "flair"), get_convention("brats"), margin=2,
        progress=False,
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=10, help="number of cases (default 10)")
    p.add_argument("--data", type=Path, default=REPO / "results/bench/preprocess_raw",
                   help="cache of the generated raw cases (reused and extended as needed)")
    p.add_argument("--out", type=Path, default=REPO / "results/bench/preprocess_out",
                   help="preprocessing output folder, wiped before a run")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--cpu", type=int, default=None,
                   help="core to pin the child to (default: the highest core allowed)")
    p.add_argument("--no-per-case", dest="per_case", action="store_false",
                   help="skip the second, case-by-case run (per-case distribution)")
    p.add_argument("--read-cases", type=int, default=3,
                   help="cases timed for the plain nibabel read reference (default 3)")
    # Internal: how the script runs itself as the pinned child.
    p.add_argument("--child", choices=["generate", "dataset", "per-case", "train-read"],
                   help=argparse.SUPPRESS)
    p.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.cases < 1:
        p.error("--cases must be >= 1")
    if args.read_cases < 1:
        p.error("--read-cases must be >= 1")
    return args


# ---------------------------------------------------------------------------------------------
# Child: pinned to one core, runs the preprocessing, writes its timings as JSON
# ---------------------------------------------------------------------------------------------


def _rss_mib(kib: int) -> float:
    return kib / 1024.0  # Linux reports ru_maxrss in KiB


def vm_hwm_mib() -> float:
    """This process's peak resident set size (``VmHWM``) in MiB.

    Unlike ``ru_maxrss``, ``VmHWM`` belongs to the address space made by ``exec``, so it does
    not include the RSS the parent had when it forked this process (Linux carries that over
    into ``ru_maxrss``: a child of a 1.7 GB parent reports >= 1.7 GB whatever it does).
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status")


def rss_anon_mib() -> float:
    """Private anonymous memory (``RssAnon``) in MiB: what a process really holds, without the
    file-backed pages of memory maps (page cache the kernel can drop at any time)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no RssAnon in /proc/self/status")


def train_read(preprocessed: Path, n_cases: int, patches_per_case: int = 4) -> dict:
    """Draw patches the way training does (``PatchDataset``, memory-mapped arrays) from the first
    ``n_cases`` cases, every case opened; report the reader's private memory afterwards."""
    import numpy as np

    from kdseg.data.dataset import PatchDataset

    cases = sorted(p.name.removesuffix(".json") for p in preprocessed.glob("*.json")
                   if p.name != "dataset.json")[:n_cases]
    before = rss_anon_mib()
    data = PatchDataset(preprocessed, cases, (128, 128, 128), 0.5, seed=0)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for index in range(len(cases)):
        for _ in range(patches_per_case):
            data.sample(rng, index)
    seconds = time.perf_counter() - start
    return {"cases": len(cases), "patches": len(cases) * patches_per_case,
            "seconds_per_patch": seconds / (len(cases) * patches_per_case),
            "rss_anon_before_mib": before, "rss_anon_after_mib": rss_anon_mib()}


def child_main(args: argparse.Namespace) -> int:
    if args.child == "train-read":
        result = train_read(args.root, args.cases)
        result["peak_rss_mib"] = vm_hwm_mib()
        args.result.write_text(json.dumps(result))
        return 0
    if args.child == "generate":
        start = time.perf_counter()
        generate(args.root, args.cases)
        args.result.write_text(json.dumps({"seconds": time.perf_counter() - start}))
        return 0
    os.sched_setaffinity(0, {args.cpu})  # first, before any library starts threads
    import importlib

    for module in ("numpy", "scipy.ndimage", "nibabel", "pandas", "kdseg.data.labels",
                   "kdseg.data.preprocess"):
        importlib.import_module(module)  # imports are not part of the measurement
    result: dict = {"affinity": sorted(os.sched_getaffinity(0)),
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
                # of the synthetic data are ~7 GB).
                shutil.rmtree(args.out / case.name)
        result["case_seconds"] = dict(zip([c.name for c in cases], seconds, strict=True))
        result["seconds"] = sum(seconds)
    result["peak_rss_mib"] = vm_hwm_mib()
    args.result.write_text(json.dumps(result))
    return 0


def run_child(mode: str, root: Path, out: Path, cpu: int, cases: int = 0) -> dict:
    """Run this script as a child; except for ``generate``, pinned to ``cpu`` (by itself) with
    one thread per native library.

    Returns the child's JSON result plus its wall time including interpreter start-up and its
    rusage from ``os.wait4`` (this child alone, whereas ``RUSAGE_CHILDREN`` is the maximum over
    all children waited for). The child's ``ru_maxrss`` is kept in the JSON only: it includes
    whatever RSS this process had when it forked; the peak reported is the child's ``VmHWM``.
    """
    os.sync()  # flush dirty pages (generated cases, a wiped output) before timing
    with tempfile.TemporaryDirectory(prefix="kdseg-bench-") as tmp:
        result_path = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--root",
               str(root), "--out", str(out), "--result", str(result_path), "--cpu", str(cpu),
               "--cases", str(max(cases, 1))]
        start = time.perf_counter()
        env = os.environ if mode == "generate" else {**os.environ, **THREAD_ENV}
        proc = subprocess.Popen(cmd, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{mode} child failed with exit code {proc.returncode}")
        result = json.loads(result_path.read_text())
    result["wall_incl_startup_s"] = wall
    result["ru_maxrss_mib"] = _rss_mib(usage.ru_maxrss)
    result["cpu_user_s"] = usage.ru_utime
    result["cpu_sys_s"] = usage.ru_stime
    return result


# ---------------------------------------------------------------------------------------------
# Parent: data, reference read, report
# ---------------------------------------------------------------------------------------------


def case_folders(data: Path, n: int) -> tuple[list[Path], int]:
    """Folders of the first ``n`` synthetic cases in ``data`` and how many are incomplete."""
    from kdseg.data.synthetic import case_paths

    missing = sum(
        not all(p.exists() for p in case_paths(data, i).values()) for i in range(n)
    )
    return [case_paths(data, i)["seg"].parent for i in range(n)], missing


def generate(data: Path, n: int) -> None:
    """Write the first ``n`` synthetic full-size cases into ``data`` (missing ones only).

    A cached dataset with fewer cases is extended: case ``i`` depends only on the seed and
    ``i``, never on ``n_cases`` (kdseg.data.synthetic), so the manifest's ``n_cases`` is set to
    ``n`` and the missing cases are written. A cache made with other settings is refused by
    ``synthesize_dataset``. Runs in its own process (``run_child("generate", ...)``) so that
    this script's process stays small.
    """
    from kdseg.data.synthetic import (
        GENERATOR_VERSION,
        MANIFEST_NAME,
        SyntheticSpec,
        synthesize_dataset,
    )
    from kdseg.fileio import write_text_atomic

    spec = SyntheticSpec(n_cases=n, shape=BRATS_SHAPE, seed=SEED)
    data.mkdir(parents=True, exist_ok=True)
    manifest = data / MANIFEST_NAME
    if manifest.exists():
        stored = json.loads(manifest.read_text())
        wanted = {k: v for k, v in vars_of(spec).items() if k != "n_cases"}
        there = {k: v for k, v in stored.get("spec", {}).items() if k != "n_cases"}
        if there == wanted and stored.get("generator_version") == GENERATOR_VERSION:
            stored["spec"]["n_cases"] = n
            stored["complete"] = False
            write_text_atomic(json.dumps(stored, indent=2) + "\n", manifest)
    synthesize_dataset(data, spec, progress=True)


def vars_of(spec: object) -> dict:
    from dataclasses import asdict

    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()}


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


def crop_fraction(out: Path, case_ids: Sequence[str]) -> float:
    """Mean fraction of the original voxels kept by the crop, from the case records."""
    fractions = []
    for c in case_ids:
        record = json.loads((out / f"{c}.json").read_text())
        kept = [stop - start for start, stop in record["bbox"]]
        total = record["original_shape"]
        fractions.append(kept[0] * kept[1] * kept[2] / (total[0] * total[1] * total[2]))
    return statistics.fmean(fractions)


def output_bytes_per_case(out: Path, case_ids: Sequence[str]) -> float:
    """Mean bytes of ``<case>_image.npy``, ``<case>_label.npy`` and ``<case>.json``."""
    sizes = [
        folder_bytes([out / f"{c}_image.npy", out / f"{c}_label.npy", out / f"{c}.json"])
        for c in case_ids
    ]
    return statistics.fmean(sizes)


def wipe(out: Path, data: Path) -> None:
    """Remove ``out`` unless it is (or contains) the data cache or the repository."""
    out_r, data_r = out.resolve(), data.resolve()
    if out_r in (REPO, Path(out_r.anchor)) or data_r == out_r or data_r.is_relative_to(out_r):
        raise SystemExit(f"--out {out} would wipe the data or the repository; choose another")
    shutil.rmtree(out, ignore_errors=True)


def machine(cpu: int) -> dict:
    import nibabel
    import numpy
    import scipy

    import kdseg

    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "cpus_allowed": len(os.sched_getaffinity(0)),
        "pinned_cpu": cpu,
        "memory_gib": mem_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "nibabel": nibabel.__version__,
        "kdseg": kdseg.__version__,
    }


def format_table(rows: Sequence[tuple[str, str]]) -> str:
    """Two left/right-aligned columns, ``quantity`` and ``value``, with a header rule."""
    rows = [("quantity", "value"), *rows]
    left = max(len(name) for name, _ in rows)
    right = max(len(value) for _, value in rows)
    lines = [f"{name.ljust(left)}  {value.rjust(right)}" for name, value in rows]
    lines.insert(1, "-" * (left + 2 + right))
    return "\n".join(lines)


def _dist(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return (f"{statistics.median(values):.2f} / {min(values):.2f} / {max(values):.2f}"
            f" / {statistics.pstdev(values):.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    cpu = max(os.sched_getaffinity(0)) if args.cpu is None else args.cpu
    if cpu not in os.sched_getaffinity(0):
        raise SystemExit(f"--cpu {cpu} is not among the allowed cores "
                         f"{sorted(os.sched_getaffinity(0))}")
    n = args.cases
    wipe(args.out, args.data)
    folders, generated = case_folders(args.data, n)
    gen_s = 0.0
    if generated:
        print(f"generating {generated} synthetic case(s) of {BRATS_SHAPE} in {args.data} ...",
              file=sys.stderr)
        gen_s = run_child("generate", args.data, args.out, cpu, cases=n)["seconds"]
    case_ids = [f.name for f in folders]

    with tempfile.TemporaryDirectory(prefix="kdseg-bench-view-") as tmp:
        # A folder holding exactly the first n cases (symlinks), whatever else the cache holds.
        view = Path(tmp)
        for folder in folders:
            (view / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
        print(f"plain nibabel read of {min(n, args.read_cases)} case(s) ...", file=sys.stderr)
        read_s = plain_read_seconds(folders[: args.read_cases], cpu)
        print(f"preprocessing {n} case(s) on core {cpu} ...", file=sys.stderr)
        whole = run_child("dataset", view, args.out / "dataset", cpu)
        per_case = None
        if args.per_case:
            print("again, case by case ...", file=sys.stderr)
            per_case = run_child("per-case", view, args.out / "per_case", cpu)

    print("training reader: patches from 2 cases, then from all cases ...", file=sys.stderr)
    reads = [run_child("train-read", args.out / "dataset", args.out, cpu, cases=k)
             for k in sorted({min(2, n), n})]

    input_bytes = statistics.fmean(folder_bytes(case_files(f)) for f in folders)
    out_bytes = output_bytes_per_case(args.out / "dataset", case_ids)
    kept = crop_fraction(args.out / "dataset", case_ids)
    per_case_s = whole["seconds"] / n
    read_median = statistics.median(read_s)
    mib = 1024**2
    rows = [
        ("cases", f"{n} x {len(MODALITIES)} x {'x'.join(map(str, BRATS_SHAPE))}"),
        ("core / threads", f"{cpu} / 1"),
        ("generation s/case (not measured, incl. start-up)",
         f"{gen_s / generated:.2f}" if generated else "cached"),
        ("preprocess s/case (whole run / N)", f"{per_case_s:.2f}"),
    ]
    if per_case is not None:
        rows.append(("per case s: median / min / max / sd",
                     _dist(list(per_case["case_seconds"].values()))))
    rows += [
        ("plain nibabel read s/case (median)", f"{read_median:.2f}"),
        ("preprocess / plain read", f"{per_case_s / read_median:.2f}"),
        ("child peak RSS MiB (whole run)", f"{whole['peak_rss_mib']:.0f}"),
        ("child RSS after imports MiB", f"{whole['rss_after_imports_mib']:.0f}"),
    ]
    if per_case is not None:
        rows.append(("child peak RSS MiB (case by case)", f"{per_case['peak_rss_mib']:.0f}"))
    rows += [
        ("input MiB/case (.nii.gz x5)", f"{input_bytes / mib:.1f}"),
        ("output MiB/case (.npy + .json)", f"{out_bytes / mib:.1f}"),
        ("crop keeps (fraction of voxels)", f"{kept:.2f}"),
    ]
    for read in reads:
        rows.append((f"training reader private MiB, {read['cases']} case(s) open",
                     f"{read['rss_anon_after_mib']:.0f} (s/patch 128^3: "
                     f"{read['seconds_per_patch']:.3f})"))
    print()
    print(format_table(rows))

    if args.json is not None:
        results = {
            "machine": machine(cpu),
            "cases": n,
            "case_shape": [len(MODALITIES), *BRATS_SHAPE],
            "generation_seconds": gen_s,
            "generated_cases": generated,
            "whole_run": whole,
            "per_case_run": per_case,
            "preprocess_seconds_per_case": per_case_s,
            "plain_read_seconds": dict(zip(case_ids, read_s, strict=False)),
            "preprocess_over_plain_read": per_case_s / read_median,
            "input_bytes_per_case": input_bytes,
            "output_bytes_per_case": out_bytes,
            "crop_fraction": kept,
            "training_reader": reads,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
