"""Deterministic splits: held-out test set and k-fold cross-validation."""

from __future__ import annotations

import pytest

from kdseg.data.splits import load_fold, make_splits, write_splits

CASES = [f"C{i:02d}" for i in range(10)]


def test_holdout_partition_and_determinism() -> None:
    (split,) = make_splits(CASES, folds=1, test_fraction=0.3, val_fraction=0.2, seed=0)
    assert len(split["test"]) == 3 and len(split["val"]) == 2 and len(split["train"]) == 5
    assert sorted(split["train"] + split["val"] + split["test"]) == CASES
    assert make_splits(list(reversed(CASES)), 1, 0.3, 0.2, 0) == [split]  # order-independent
    assert make_splits(CASES, 1, 0.3, 0.2, seed=1) != [split]


def test_kfold_predicts_every_case_once() -> None:
    splits = make_splits(CASES, folds=3, test_fraction=0.5, val_fraction=0.1, seed=0)
    tested = [c for s in splits for c in s["test"]]
    assert sorted(tested) == CASES  # each case tested exactly once
    for s in splits:
        assert not set(s["test"]) & set(s["train"] + s["val"])
        assert len(s["val"]) == 1


def test_errors() -> None:
    with pytest.raises(ValueError, match="at least 3 cases"):
        make_splits(["a", "b"], 1, 0.3, 0.2, 0)
    with pytest.raises(ValueError, match="exceeds the number of cases"):
        make_splits(CASES, 11, 0.3, 0.2, 0)


def test_load_fold(tmp_path) -> None:
    path = tmp_path / "splits.json"
    write_splits(make_splits(CASES, 2, 0.3, 0.2, 0), path)
    assert load_fold(path, 1)["fold"] == 1
    with pytest.raises(ValueError, match="no fold 5"):
        load_fold(path, 5)
