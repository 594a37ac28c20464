"""Patch sampling: shapes, foreground oversampling, determinism per (seed, epoch)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

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


def test_persistent_workers_follow_set_epoch(tiny_data: dict) -> None:
    """A persistent worker keeps its copy of the dataset across epochs; it must still draw the
    epoch's stream (the same patches as in the training process: one worker has id 0)."""
    def in_process(epoch: int) -> list[torch.Tensor]:
        ds = _dataset(tiny_data, 0.5)
        ds.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(ds, batch_size=2)
        return [b[0] for b in itertools.islice(iter(loader), 3)]

    ds = _dataset(tiny_data, 0.5)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1,
                                         persistent_workers=True)
    for epoch in (0, 1, 2):
        ds.set_epoch(epoch)
        batches = [b[0] for b in itertools.islice(iter(loader), 3)]
        expected = in_process(epoch)
        assert all(torch.equal(a, b) for a, b in zip(batches, expected, strict=True)), epoch


def test_unpaired_stream_pairs_patches_of_two_different_cases(tiny_data: dict) -> None:
    cases = json.loads(tiny_data["splits"].read_text())[0]["train"]
    ds = PatchDataset(tiny_data["preprocessed"], cases, (16, 16, 16), 0.5, seed=0, unpaired=True)
    drawn: list[int | None] = []
    sample = ds.sample

    def spy(rng, case_index=None, flip=()):
        drawn.append(case_index)
        return sample(rng, case_index, flip)

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


def _monai_stream(ds: PatchDataset) -> Iterator[tuple[torch.Tensor, ...]]:
    """The stream as kdseg first wrote it: ``sample`` + MONAI's transforms on MetaTensors."""
    from monai.data import MetaTensor

    from kdseg.data.dataset import monai_augmentation

    augment = monai_augmentation()

    def plain(x) -> torch.Tensor:
        return torch.as_tensor(x.as_tensor() if isinstance(x, MetaTensor) else x).contiguous()

    rng = np.random.default_rng([ds.seed, ds.epoch, 0])
    augment.set_random_state(seed=int(rng.integers(2**31)))
    n = ds.n_first
    while True:
        if not ds.unpaired:
            p = augment(ds.sample(rng))
            yield plain(p["image"]), plain(p["label"])
            continue
        first = int(rng.integers(n))
        if ds.own_other:
            other = n + int(rng.integers(len(ds.cases) - n))
        else:
            other = (first + 1 + int(rng.integers(n - 1))) % n
            while ds.cases[other] == ds.cases[first]:
                other = int(rng.integers(n))
        a, b = augment(ds.sample(rng, first)), augment(ds.sample(rng, other))
        yield plain(a["image"]), plain(a["label"]), plain(b["image"]), plain(b["label"])


@pytest.mark.parametrize("patch, unpaired, seed, epoch", [
    ((16, 16, 16), False, 0, 0),
    ((16, 16, 16), False, 5, 3),
    ((40, 12, 33), False, 1, 2),  # wider than the volume along x: zero padding, odd sizes
    ((16, 16, 16), True, 2, 1),
])
def test_stream_is_bit_identical_to_monai_transforms(tiny_data: dict, patch, unpaired: bool,
                                                     seed: int, epoch: int) -> None:
    """kdseg's own augmentation replays MONAI's random draws and float32 arithmetic exactly:
    the same seed gives the same patches as the MONAI pipeline it replaced."""
    cases = json.loads(tiny_data["splits"].read_text())[0]["train"]

    def make() -> PatchDataset:
        ds = PatchDataset(tiny_data["preprocessed"], cases, patch, 0.5, seed, unpaired=unpaired)
        ds.set_epoch(epoch)
        return ds

    pairs = itertools.islice(zip(iter(make()), _monai_stream(make()), strict=True), 60)
    for ours, reference in pairs:
        assert len(ours) == len(reference)
        for a, b in zip(ours, reference, strict=True):
            assert a.dtype == b.dtype and a.is_contiguous()
            assert torch.equal(a, b)


@pytest.mark.parametrize("flip", [(0,), (2,), (0, 2), (0, 1, 2)])
def test_sample_flip_mirrors_the_same_patch(tiny_data: dict, flip: tuple[int, ...]) -> None:
    ds = _dataset(tiny_data, 0.5)
    for seed in range(5):
        plain = ds.sample(np.random.default_rng(seed))
        mirrored = ds.sample(np.random.default_rng(seed), flip=flip)
        for key in ("image", "label"):
            axes = tuple(a + 1 for a in flip)  # after the channel axis
            np.testing.assert_array_equal(mirrored[key], np.flip(plain[key], axes))
            assert mirrored[key].flags.c_contiguous
        assert mirrored["image"].dtype == np.float32 and mirrored["label"].dtype == np.int64
