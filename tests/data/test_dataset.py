"""Patch sampling: shapes, foreground oversampling, determinism per (seed, epoch)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from kdseg.data.dataset import PatchDataset
from kdseg.data.splits import load_fold


def _dataset(tiny_data: dict, fg: float, seed: int = 0) -> PatchDataset:
    train = load_fold(tiny_data["splits"], 0)["train"]
    return PatchDataset(tiny_data["preprocessed"], train, (16, 16, 16), fg, seed)


def test_patch_shapes_and_types(tiny_data: dict) -> None:
    image, label = next(iter(_dataset(tiny_data, 0.5)))
    assert image.shape == (4, 16, 16, 16) and image.dtype == torch.float32
    assert label.shape == (1, 16, 16, 16) and label.dtype == torch.int64
    assert set(torch.unique(label).tolist()) <= {0, 1, 2, 3}


def test_foreground_oversampling(tiny_data: dict) -> None:
    def fg_fraction(prob: float) -> float:
        patches = itertools.islice(iter(_dataset(tiny_data, prob)), 40)
        return float(np.mean([(label > 0).any().item() for _, label in patches]))

    assert fg_fraction(1.0) == 1.0  # every patch is centred on a tumour voxel
    assert fg_fraction(1.0) > fg_fraction(0.0)


def test_stream_is_a_function_of_seed_and_epoch(tiny_data: dict) -> None:
    def first(seed: int, epoch: int) -> torch.Tensor:
        ds = _dataset(tiny_data, 0.5, seed)
        ds.set_epoch(epoch)
        return next(iter(ds))[0]

    assert torch.equal(first(0, 3), first(0, 3))
    assert not torch.equal(first(0, 3), first(0, 4))
    assert not torch.equal(first(0, 3), first(1, 3))


def test_unpaired_stream_pairs_patches_of_two_different_cases(tiny_data: dict) -> None:
    cases = json.loads(tiny_data["splits"].read_text())[0]["train"]
    ds = PatchDataset(tiny_data["preprocessed"], cases, (16, 16, 16), 0.5, seed=0, unpaired=True)
    drawn: list[int | None] = []
    sample = ds.sample

    def spy(rng, case_index=None):
        drawn.append(case_index)
        return sample(rng, case_index)

    ds.sample = spy  # type: ignore[method-assign]
    stream = iter(ds)
    for _ in range(20):
        item = next(stream)
        assert len(item) == 4 and item[0].shape == item[2].shape == (4, 16, 16, 16)
    pairs = list(zip(drawn[::2], drawn[1::2], strict=True))
    assert all(a is not None and a != b for a, b in pairs)
    assert len(set(pairs)) > 1


def test_unpaired_stream_needs_two_cases(tiny_data: dict) -> None:
    cases = json.loads(tiny_data["splits"].read_text())[0]["train"]
    with pytest.raises(ValueError, match="unpaired"):
        PatchDataset(tiny_data["preprocessed"], cases[:1], (16, 16, 16), 0.5, seed=0,
                     unpaired=True)
