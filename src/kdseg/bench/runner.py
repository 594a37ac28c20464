"""``kdseg bench``: run the benchmark sections, print one table, write CSV/JSON/Markdown.

Sections (each a module of this package with ``run(opts, previous) -> SectionResult``):

=================  ===========================================================================
``train_step``     s/step of every method vs a plain MONAI step (same network, patch, batch);
                   on CUDA also the teacher and a student at ``gpu_patch``^3 with utilisation
``data_pipeline``  patches/s the loader delivers (0, 1, 2 workers) vs patches/s training eats
``inference``      s per full-size case with sliding window vs MONAI's own call
``evaluation``     Dice + HD95 of three regions of a full-size case vs MedPy's dc/hd95
``preprocess``     s and peak memory per full-size case
``scaling``        how the workflow's wall time grows with cases, subsets, methods (from the
                   numbers above), and the estimate for a full BraTS benchmark
=================  ===========================================================================

The output folder gets ``bench.csv`` (the summary rows), ``bench.md`` (the same as a Markdown
table), ``bench.json`` (machine description, options, rows and each section's metadata) and
``<section>.csv`` (each section's detailed measurements). They are rewritten after every
section, so an interrupted run keeps what it measured. A section that fails is reported (its
traceback on stderr, a row in the table) and the others still run; the exit status says so.

Running some sections again (``kdseg bench scaling``) keeps the other sections' results from
the output folder's ``bench.json`` when they were measured on the same machine, device and
thread count, so the table stays whole and ``scaling`` can use them.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from kdseg.bench.common import (
    BenchOptions,
    Row,
    SectionResult,
    format_table,
    rows_frame,
    scratch_dir,
)

SECTIONS: tuple[str, ...] = ("train_step", "data_pipeline", "inference", "evaluation",
                             "preprocess", "scaling")


class SectionFailed(ValueError):
    """One or more sections raised; the others' results were written."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value != value:  # NaN -> null (strict JSON)
        return None
    return value


def write_outputs(out: Path, opts: BenchOptions, machine: dict[str, Any],
                  results: dict[str, SectionResult], seconds: dict[str, float]) -> list[Row]:
    """(Re)write ``bench.{csv,md,json}`` and each section's details; returns all rows."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [row for res in results.values() for row in res.rows]
    rows_frame(rows).to_csv(out / "bench.csv", index=False)
    header = (f"kdseg bench — {machine['cpu']} ({machine['cpus_usable']} usable cores), "
              f"device {opts.device}, {opts.threads} thread(s), {machine['date']}, "
              f"git {machine['git_sha'][:12]}")
    (out / "bench.md").write_text(f"{header}\n\n{format_table(rows)}\n")
    for name, res in results.items():
        if res.details is not None:
            res.details.to_csv(out / f"{name}.csv", index=False)
    doc = {"machine": machine, "options": asdict(opts), "section_seconds": seconds,
           "rows": [asdict(r) for r in rows],
           "sections": {name: res.meta for name, res in results.items()}}
    (out / "bench.json").write_text(json.dumps(_jsonable(doc), indent=1, default=str))
    return rows


def _same_setup(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("cpu", "cpus_usable", "device", "torch_threads",
                                              "gpu"))


_SAME_OPTIONS = ("config", "quick", "full_shape", "gpu_patch", "repeats", "compile")


def earlier_results(out: Path, machine: dict[str, Any],
                    opts: BenchOptions) -> dict[str, SectionResult]:
    """The sections recorded in ``out/bench.json`` by a run on the same setup and with the
    same measuring options (else none)."""
    path = out / "bench.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    options = _jsonable(asdict(opts))
    if not _same_setup(doc.get("machine", {}), machine) or any(
            doc.get("options", {}).get(k) != options[k] for k in _SAME_OPTIONS):
        return {}
    rows: dict[str, list[Row]] = {}
    for r in doc.get("rows", []):
        values = {k: (math.nan if v is None and k == "value" else v) for k, v in r.items()}
        rows.setdefault(r["section"], []).append(Row(**values))
    return {name: SectionResult(rows.get(name, []), None, meta)
            for name, meta in doc.get("sections", {}).items() if name in SECTIONS}


def run_bench(opts: BenchOptions, sections: tuple[str, ...] = SECTIONS) -> list[Row]:
    """Run ``sections`` in order (``scaling`` reads the others' results); returns all rows.

    Raises:
        SectionFailed: after the last section, if any section failed.
    """
    from kdseg.bench.common import machine_description
    from kdseg.runtime import limit_threads

    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown benchmark section(s) {unknown}; choose from {list(SECTIONS)}")
    limit_threads(opts.threads)
    machine = machine_description(opts.device)
    kept = {k: v for k, v in earlier_results(Path(opts.out), machine, opts).items()
            if k not in sections}
    if kept:
        print(f"[kdseg bench] keeping earlier results of {sorted(kept)} from "
              f"{opts.out}/bench.json (same machine)", file=sys.stderr)
    seconds: dict[str, float] = {}
    failed: list[str] = []
    with scratch_dir(opts, "run") as base:
        for name in (s for s in SECTIONS if s in sections):
            print(f"[kdseg bench] {name} ...", file=sys.stderr, flush=True)
            module = importlib.import_module(f"kdseg.bench.{name}")
            section_opts = replace(opts, workdir=base / name)
            t0 = time.perf_counter()
            try:
                kept[name] = module.run(section_opts, {k: kept[k] for k in kept
                                                       if k != name})
            except Exception as err:  # keep the other sections' results; report at the end
                traceback.print_exc()
                failed.append(name)
                kept[name] = SectionResult([Row(name, "section failed", math.nan, "",
                                                note=f"{type(err).__name__}: {err}")])
            seconds[name] = round(time.perf_counter() - t0, 1)
            # which code measured it, and when (kept sections keep their own)
            kept[name].meta["measured"] = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                           "git_sha": machine["git_sha"],
                                           "seconds": seconds[name]}
            print(f"[kdseg bench] {name} done in {seconds[name]:.0f} s", file=sys.stderr,
                  flush=True)
            ordered = {k: kept[k] for k in SECTIONS if k in kept}
            rows = write_outputs(Path(opts.out), opts, machine, ordered, seconds)
    print((Path(opts.out) / "bench.md").read_text())
    print(f"written: {opts.out}/bench.csv, bench.json, bench.md and one CSV per section")
    if failed:
        raise SectionFailed(f"benchmark section(s) {failed} failed (tracebacks above); the "
                           f"other results are in {opts.out}")
    return rows
