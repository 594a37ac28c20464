"""Deterministic train / validation / test splits.

* ``folds == 1``: a held-out test set (``test_fraction`` of the cases); the rest is training,
  of which ``val_fraction`` is used for per-epoch validation.
* ``folds == k >= 2``: k-fold cross-validation; fold ``i`` tests on the i-th part and trains on
  the others, so every case is predicted exactly once by a model that never saw it.

The order depends only on the sorted case ids and ``seed``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kdseg.fileio import write_text_atomic


def make_splits(cases: Sequence[str], folds: int, test_fraction: float, val_fraction: float,
                seed: int) -> list[dict[str, list[str]]]:
    """One ``{"fold", "train", "val", "test"}`` dict per fold (lists of case ids, sorted)."""
    cases = sorted(set(cases))
    if len(cases) < 3:
        raise ValueError(f"need at least 3 cases to split into train/val/test, got {len(cases)}")
    if folds < 1:
        raise ValueError(f"splits.folds must be >= 1, got {folds}")
    if folds > len(cases):
        raise ValueError(f"splits.folds={folds} exceeds the number of cases ({len(cases)})")
    rng = np.random.default_rng(seed)
    order = [cases[i] for i in rng.permutation(len(cases))]
    if folds == 1:
        if not 0 < test_fraction < 1:
            raise ValueError(f"splits.test_fraction must be in (0, 1), got {test_fraction}")
        n_test = max(1, round(test_fraction * len(order)))
        test_sets = [order[:n_test]]
    else:
        test_sets = [list(part) for part in np.array_split(np.array(order, dtype=object), folds)]
    out = []
    for fold, test in enumerate(test_sets):
        rest = [c for c in order if c not in set(test)]
        n_val = 0
        if val_fraction > 0:
            n_val = min(len(rest) - 1, max(1, math.ceil(val_fraction * len(rest))))
        val, train = rest[:n_val], rest[n_val:]
        out.append({"fold": fold, "train": sorted(train), "val": sorted(val), "test": sorted(test)})
    return out


def write_splits(splits: list[dict], path: Path) -> None:
    """Write the output of :func:`make_splits` to ``path`` as JSON, atomically."""
    # Plain json.dumps (no default=str): a non-JSON value here is a bug, not something to coerce.
    write_text_atomic(json.dumps(splits, indent=1), path)


def load_fold(path: Path, fold: int) -> dict[str, list[str]]:
    """The split of one fold; a clear error if the file lacks it."""
    splits = json.loads(Path(path).read_text())
    for entry in splits:
        if entry["fold"] == fold:
            return entry
    raise ValueError(f"{path}: no fold {fold} (folds present: {[e['fold'] for e in splits]})")
