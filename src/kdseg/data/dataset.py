"""Random training patches with foreground oversampling and augmentation.

Patches are drawn from the preprocessed arrays (memory-mapped ``.npy``): pick a case uniformly,
centre the patch on a random foreground voxel with probability ``foreground_prob`` (nnU-Net's
oversampling, so small tumours are seen often enough) or on a random voxel otherwise, then
augment. Augmentation is applied once to the **full-modality** patch; the trainer then selects
the student's channels, so teacher and student always see the same augmented patch.

The patch sampling is written by hand (instead of MONAI's ``RandCropByPosNegLabeld``) because
it needs to read only the patch from a memory-mapped array, not the whole case; the
augmentations are MONAI's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, RandFlipd, RandScaleIntensityd, RandShiftIntensityd
from torch.utils.data import IterableDataset, get_worker_info

from kdseg.data.preprocess import foreground_path, foreground_sample, load_preprocessed


class PatchDataset(IterableDataset):
    """Endless stream of ``(image, label)`` patches.

    Yields:
        image: ``(C, *patch_size)`` float32 tensor with all modalities.
        label: ``(1, *patch_size)`` int64 class ids.

    With ``unpaired=True`` each item is ``(image, label, other_image, other_label)`` where the
    second patch comes from a *different* case (the two streams of an unpaired method, e.g.
    ``ummkd`` with ``unpaired: true``), each augmented independently. The second stream draws
    from ``other_cases`` when given (unpaired data: the cases of the other modality), else from
    ``cases``.
    """

    def __init__(self, preprocessed_dir: Path, cases: Sequence[str],
                 patch_size: Sequence[int], foreground_prob: float, seed: int,
                 unpaired: bool = False, other_cases: Sequence[str] | None = None) -> None:
        if not cases:
            raise ValueError("PatchDataset: no training cases")
        if other_cases is not None and not unpaired:
            raise ValueError("PatchDataset: other_cases is only used with unpaired=True")
        if unpaired and other_cases is not None and not other_cases:
            raise ValueError("PatchDataset: the second stream has no cases (other_cases empty)")
        if unpaired and other_cases is None and len(set(cases)) < 2:
            raise ValueError("PatchDataset: unpaired sampling needs >= 2 training cases")
        self.unpaired = unpaired
        self.dir = Path(preprocessed_dir)
        self.n_first = len(cases)
        self.own_other = other_cases is not None
        # one pool: indices < n_first are the first stream's cases, the rest the second's
        self.cases = list(cases) + list(other_cases or [])
        self.patch_size = tuple(int(p) for p in patch_size)
        self.foreground_prob = foreground_prob
        self.seed = seed
        self.epoch = 0
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.augment = Compose([
            RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=0),
            RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=1),
            RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=2),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5, channel_wise=True),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5, channel_wise=True),
        ])

    def set_epoch(self, epoch: int) -> None:
        """Make the stream a pure function of (seed, epoch, worker): resumed runs match."""
        self.epoch = epoch

    def _case(self, case: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if case not in self._arrays:
            image, label, _ = load_preprocessed(self.dir, case, mmap=True)
            if label is None:
                raise ValueError(f"{self.dir}: case {case} has no label; cannot train on it")
            path = foreground_path(self.dir, case)
            # Memory-mapped like the arrays: RAM does not grow with the number of cases.
            fg = (np.load(path, mmap_mode="r") if path.is_file()
                  else foreground_sample(np.asarray(label)))
            self._arrays[case] = (image, label, fg)
        return self._arrays[case]

    def _crop(self, array: np.ndarray, start: np.ndarray) -> np.ndarray:
        """Crop ``patch_size`` at ``start`` from the last 3 axes, zero-padding outside."""
        spatial = np.array(array.shape[-3:])
        size = np.array(self.patch_size)
        lo = np.maximum(start, 0)
        hi = np.minimum(start + size, spatial)
        out = np.zeros((*array.shape[:-3], *self.patch_size), dtype=array.dtype)
        src = array[..., lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        dst_lo = lo - start
        dst_hi = dst_lo + (hi - lo)
        out[..., dst_lo[0]:dst_hi[0], dst_lo[1]:dst_hi[1], dst_lo[2]:dst_hi[2]] = src
        return out

    def sample(self, rng: np.random.Generator,
               case_index: int | None = None) -> dict[str, np.ndarray]:
        """One un-augmented patch ``{"image": (C, *P), "label": (1, *P)}`` from case number
        ``case_index`` (a random case when ``None``)."""
        if case_index is None:
            case_index = int(rng.integers(self.n_first))
        image, label, fg = self._case(self.cases[case_index])
        spatial = np.array(label.shape)
        size = np.array(self.patch_size)
        if len(fg) and rng.random() < self.foreground_prob:
            centre = np.asarray(fg[rng.integers(len(fg))], dtype=np.int64)
        else:
            centre = rng.integers(0, spatial)
        # Keep the patch inside the volume where the volume is large enough (nnU-Net style).
        start = np.clip(centre - size // 2, 0, np.maximum(spatial - size, 0))
        return {
            "image": self._crop(image, start).astype(np.float32, copy=False),
            "label": self._crop(label, start)[None].astype(np.int64),
        }

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        rng = np.random.default_rng([self.seed, self.epoch, worker])
        self.augment.set_random_state(seed=int(rng.integers(2**31)))
        n = self.n_first
        while True:
            if not self.unpaired:
                patch = self.augment(self.sample(rng))
                yield _plain_tensor(patch["image"]), _plain_tensor(patch["label"])
                continue
            first = int(rng.integers(n))
            if self.own_other:
                other = n + int(rng.integers(len(self.cases) - n))
            else:
                other = (first + 1 + int(rng.integers(n - 1))) % n  # any case but `first`
                while self.cases[other] == self.cases[first]:  # duplicated ids in the list
                    other = int(rng.integers(n))
            a = self.augment(self.sample(rng, first))
            b = self.augment(self.sample(rng, other))
            yield (_plain_tensor(a["image"]), _plain_tensor(a["label"]),
                   _plain_tensor(b["image"]), _plain_tensor(b["label"]))


def _plain_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """MONAI transforms return ``MetaTensor``; the training step wants plain contiguous tensors."""
    if isinstance(x, MetaTensor):
        x = x.as_tensor()
    return torch.as_tensor(x).contiguous()
