"""Preprocessing time and peak memory on full-size BraTS-sized cases, on one core.

A thin command line around the ``preprocess`` section of ``kdseg bench``
(:mod:`kdseg.bench.preprocess`, where the measurement and its caveats are described), with a
case count of your choice and the generated cases cached in ``--data`` between runs.

Usage::

    .venv/bin/python benchmarks/preprocess.py                    # 10 cases
    .venv/bin/python benchmarks/preprocess.py --cases 50 --json results/bench/preprocess.json

Prints the section's rows as a table; ``--json`` also writes the numbers with a machine
description. ``python -m kdseg bench preprocess`` runs the same with the bench's defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BRATS_SHAPE = (240, 240, 155)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=10, help="number of cases (default 10)")
    p.add_argument("--shape", type=int, nargs=3, default=list(BRATS_SHAPE),
                   metavar=("X", "Y", "Z"), help="case grid (default BraTS's 240 240 155)")
    p.add_argument("--data", type=Path, default=REPO / "results/bench/preprocess_raw",
                   help="cache of the generated raw cases (reused and extended as needed)")
    p.add_argument("--out", type=Path, default=REPO / "results/bench/preprocess_out",
                   help="preprocessing output folder, wiped before a run")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--cpu", type=int, default=None,
                   help="core to pin the measurement to (default: the highest core allowed)")
    p.add_argument("--no-per-case", dest="per_case", action="store_false",
                   help="skip the second, case-by-case run (per-case distribution)")
    p.add_argument("--read-cases", type=int, default=3,
                   help="cases timed for the plain nibabel read reference (default 3)")
    p.add_argument("--patch", type=int, default=128,
                   help="patch edge of the training-reader measurement (default 128)")
    args = p.parse_args(argv)
    if args.cases < 1:
        p.error("--cases must be >= 1")
    if args.read_cases < 1:
        p.error("--read-cases must be >= 1")
    return args


def plan_from_args(args: argparse.Namespace):  # -> kdseg.bench.preprocess.Plan
    """The section's :class:`~kdseg.bench.preprocess.Plan` for these arguments."""
    from kdseg.bench.preprocess import Plan, default_cpu

    return Plan(cases=args.cases, shape=tuple(args.shape), data=args.data, out=args.out,
                cpu=default_cpu() if args.cpu is None else args.cpu, per_case=args.per_case,
                read_cases=args.read_cases, reader_patch=args.patch)


def main(argv: Sequence[str] | None = None) -> int:
    from kdseg.bench.common import format_table, machine_description
    from kdseg.bench.preprocess import measure, summary_rows

    args = parse_args(argv)
    try:
        results = measure(plan_from_args(args))
    except ValueError as err:  # a core not allowed, an output folder that holds the data
        raise SystemExit(str(err)) from err
    print()
    print(format_table(summary_rows(results)))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {"machine": machine_description("cpu"), **results}
        args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"\nwritten: {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
