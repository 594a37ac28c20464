"""Deterministic train / validation / test splits.

* ``folds == 1``: a held-out test set (``test_fraction`` of the cases); the rest is training,
  of which ``val_fraction`` is used for per-epoch validation.
* ``folds == k >= 2``: k-fold cross-validation; fold ``i`` tests on the i-th part and trains on
  the others, so every case is predicted exactly once by a model that never saw it.

The order depends only on the sorted case ids and ``seed``. With ``strata`` (an unpaired dataset:
case -> the modalities it has) each stratum is split alike and the parts are merged, so every
modality group has training, validation and test cases. A published split (ProtoKD's BraTS 2018
200/28/57) is read from a file instead (:func:`read_split_file`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdseg.fileio import write_text_atomic


def make_splits(cases: Sequence[str], folds: int, test_fraction: float, val_fraction: float,
                seed: int, strata: Mapping[str, str] | None = None) -> list[dict[str, list[str]]]:
    """One ``{"fold", "train", "val", "test"}`` dict per fold (lists of case ids, sorted).

    ``strata`` maps every case to a group; each group is split on its own (same settings) and
    the folds are merged group by group.
    """
    if strata is not None and len(set(strata[c] for c in cases)) > 1:
        groups = _viable_groups(cases, strata, folds)
        merged = [{"fold": f, "train": [], "val": [], "test": []} for f in range(folds)]
        for name, members in sorted(groups.items()):
            try:
                parts = make_splits(members, folds, test_fraction, val_fraction, seed)
            except ValueError as err:
                raise ValueError(f"cases with modalities {name}: {err}") from None
            for fold, part in zip(merged, parts, strict=True):
                for key in ("train", "val", "test"):
                    fold[key] = sorted(fold[key] + part[key])  # type: ignore[operator]
        return merged  # type: ignore[return-value]
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


SPLIT_NAMES = ("train", "val", "test")


def _read_split_lists(folder: Path) -> Any:
    """``train``/``val``/``test`` case lists in a folder (``<split>_list.txt`` as in ProtoKD's
    ``data/`` folder, or ``<split>.txt``; one case id per line) as a (case, split) table."""
    import pandas as pd

    rows = []
    for name in SPLIT_NAMES:
        found = [folder / f"{name}_list.txt", folder / f"{name}.txt"]
        existing = [f for f in found if f.is_file()]
        if not existing:
            if name == "val":
                continue  # a split without validation cases is allowed
            raise ValueError(f"{folder}: no {found[0].name} or {found[1].name} case list")
        lines = existing[0].read_text().splitlines()
        rows += [(line.strip(), name) for line in lines if line.strip()]
    return pd.DataFrame(rows, columns=["case", "split"])


def read_split_file(path: Path, cases: Sequence[str]) -> dict[str, Any]:
    """A predefined split as fold 0, from a CSV/TSV with columns ``case`` and ``split`` (train |
    val | test) or from a folder of case lists (``train_list.txt``, ``val_list.txt``,
    ``test_list.txt``: ProtoKD's published BraTS 2018 split as it is distributed). Every listed
    case must exist among ``cases`` (the preprocessed ones) and appear once; dataset cases the
    file does not list are left out (and reported)."""
    import pandas as pd  # only this function needs pandas

    path = Path(path)
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    try:
        table = (_read_split_lists(path) if path.is_dir()
                 else pd.read_csv(path, sep=sep, dtype=str).fillna(""))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read split file ({err})") from None
    missing = [c for c in ("case", "split") if c not in table]
    if missing:
        raise ValueError(f"{path}: split file lacks column(s) {missing}; has {list(table)}")
    bad = sorted(set(table["split"]) - set(SPLIT_NAMES))
    if bad:
        raise ValueError(f"{path}: unknown split names {bad}; use {list(SPLIT_NAMES)}")
    repeated = sorted(table["case"][table["case"].duplicated()])
    if repeated:
        raise ValueError(f"{path}: cases listed more than once: {repeated[:10]}")
    unknown = sorted(set(table["case"]) - set(cases))
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} listed case(s) are not in the dataset, e.g. "
                         f"{unknown[:5]}")
    split: dict[str, Any] = {"fold": 0}
    for name in SPLIT_NAMES:
        split[name] = sorted(table["case"][table["split"] == name])
    if not split["train"] or not split["test"]:
        raise ValueError(f"{path}: the split needs training and test cases")
    left_out = sorted(set(cases) - set(table["case"]))
    if left_out:
        print(f"{path}: {len(left_out)} dataset case(s) are in no split and are not used")
    return split


def _viable_groups(cases: Sequence[str], strata: Mapping[str, str],
                   folds: int) -> dict[str, list[str]]:
    """Cases by stratum; strata too small to split on their own (fewer than ``max(3, folds)``
    cases, e.g. a few fully paired cases in an unpaired dataset) go into the largest one."""
    groups: dict[str, list[str]] = {}
    for case in sorted(set(cases)):
        groups.setdefault(strata[case], []).append(case)
    need = max(3, folds)
    small = sorted(name for name, members in groups.items() if len(members) < need)
    large = [name for name in groups if name not in small]
    if small and large:
        target = max(large, key=lambda name: (len(groups[name]), name))
        for name in small:
            groups[target] += groups.pop(name)
        groups[target].sort()
    return groups


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
