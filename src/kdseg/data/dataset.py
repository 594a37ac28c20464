"""Random training patches with foreground oversampling and augmentation.

Patches are drawn from the preprocessed arrays (memory-mapped ``.npy``): pick a case uniformly,
centre the patch on a random foreground voxel with probability ``foreground_prob`` (nnU-Net's
oversampling, so small tumours are seen often enough) or on a random voxel otherwise, then
augment. Augmentation is applied once to the **full-modality** patch; the trainer then selects
the student's channels, so teacher and student always see the same augmented patch.

The patch sampling is written by hand (instead of MONAI's ``RandCropByPosNegLabeld``) because
it needs to read only the patch from a memory-mapped array, not the whole case. The
augmentation is MONAI's ``Compose([RandFlipd x 3, RandScaleIntensityd, RandShiftIntensityd])``
re-done on plain arrays (:class:`Augmentation`): the same random draws from the same
``RandomState`` seeds and the same float32 arithmetic, so the patch stream is bit-identical to
the MONAI pipeline's (a test compares them), at a fraction of the cost: MONAI's ``MetaTensor``
bookkeeping dominated small patches (~5 ms of ~6 ms per 24^3 patch) and its flips and
channel stacks copied every 128^3 patch four more times. Flips are done while cropping (the
crop copies the patch anyway), intensity changes in place.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
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
        # In shared memory: persistent DataLoader workers keep the copy of the dataset they
        # started with, and must still see set_epoch() of later epochs.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.augment = Augmentation()

    def set_epoch(self, epoch: int) -> None:
        """Make the stream a pure function of (seed, epoch, worker): resumed runs match.

        Seen by DataLoader workers already running (``persistent_workers=True``) when their
        next iteration starts, i.e. at the next ``iter(loader)``.
        """
        self._epoch.fill_(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

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

    def _crop(self, array: np.ndarray, start: np.ndarray, flip: Sequence[int] = (),
              dtype: np.dtype | type | None = None) -> np.ndarray:
        """Crop ``patch_size`` at ``start`` from the last 3 axes, zero-padding outside.

        ``flip``: spatial axes (0-2) along which the patch is mirrored, written mirrored into
        the output in the same single copy (exactly ``np.flip`` of the plain crop). ``dtype``:
        of the output (default the array's), cast in that copy too.
        """
        spatial = np.array(array.shape[-3:])
        size = np.array(self.patch_size)
        lo = np.maximum(start, 0)
        hi = np.minimum(start + size, spatial)
        out = np.zeros((*array.shape[:-3], *self.patch_size), dtype=dtype or array.dtype)
        # Writing the crop through a reversed view of `out` leaves `out` mirrored. (Mirroring
        # the last axis makes numpy's copy loop run backwards, about 3x slower than a plain
        # copy at 128^3, yet still cheaper than copying once more to flip afterwards.)
        target = np.flip(out, axis=tuple(array.ndim - 3 + a for a in flip)) if flip else out
        src = array[..., lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        dst_lo = lo - start
        dst_hi = dst_lo + (hi - lo)
        target[..., dst_lo[0]:dst_hi[0], dst_lo[1]:dst_hi[1], dst_lo[2]:dst_hi[2]] = src
        return out

    def sample(self, rng: np.random.Generator, case_index: int | None = None,
               flip: Sequence[int] = ()) -> dict[str, np.ndarray]:
        """One patch ``{"image": (C, *P) float32, "label": (1, *P) int64}`` from case number
        ``case_index`` (a random case when ``None``), mirrored along the spatial axes ``flip``
        (none: un-augmented). Draws from ``rng`` only the case, centre and foreground choice,
        so ``flip`` does not change which patch is drawn."""
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
            "image": self._crop(image, start, flip, np.float32),
            "label": self._crop(label, start, flip, np.int64)[None],
        }

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        rng = np.random.default_rng([self.seed, self.epoch, worker])
        self.augment.set_random_state(seed=int(rng.integers(2**31)))
        n = self.n_first
        while True:
            if not self.unpaired:
                yield self._augmented(rng, None)
                continue
            first = int(rng.integers(n))
            if self.own_other:
                other = n + int(rng.integers(len(self.cases) - n))
            else:
                other = (first + 1 + int(rng.integers(n - 1))) % n  # any case but `first`
                while self.cases[other] == self.cases[first]:  # duplicated ids in the list
                    other = int(rng.integers(n))
            yield (*self._augmented(rng, first), *self._augmented(rng, other))

    def _augmented(self, rng: np.random.Generator,
                   case_index: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One augmented patch as plain contiguous tensors ``(C, *P)`` float32 and
        ``(1, *P)`` int64. The augmentation draws from its own random states, never from
        ``rng``, so ``rng`` is consumed exactly as by the un-augmented :meth:`sample`."""
        patch = self.sample(rng, case_index, flip=self.augment.draw_flip())
        image = torch.from_numpy(patch["image"])
        self.augment.intensity_(image)
        return image, torch.from_numpy(patch["label"])


def monai_augmentation() -> Any:
    """MONAI's ``Compose`` that :class:`Augmentation` replays: the reference the tests and
    ``kdseg bench data_pipeline`` compare kdseg's stream with (keys ``image``, ``label``)."""
    from monai.transforms import Compose, RandFlipd, RandScaleIntensityd, RandShiftIntensityd

    return Compose([
        RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=0),
        RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=1),
        RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=2),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.5, channel_wise=True),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5, channel_wise=True),
    ])


class Augmentation:
    """Random flips (each spatial axis, p 0.5), per-channel intensity scale (factor
    U(-0.1, 0.1), p 0.5) and shift (offset U(-0.1, 0.1), p 0.5), on plain arrays.

    Replays exactly the random draws and arithmetic of MONAI's
    ``Compose([RandFlipd(spatial_axis=0), RandFlipd(spatial_axis=1), RandFlipd(spatial_axis=2),
    RandScaleIntensityd(factors=0.1, prob=0.5, channel_wise=True),
    RandShiftIntensityd(offsets=0.1, prob=0.5, channel_wise=True)])`` (all ``prob=0.5``) after
    ``set_random_state(seed)``: the Compose seeds one ``np.random.RandomState`` per transform
    from its own ``RandomState(seed)``; each flip draws "apply?" per patch; each intensity
    transform draws "apply?" and, when applying, its inner array transform (seeded with the
    *same* seed) draws "apply?" (p 1, always true) and then one value per channel.
    """

    PROB = 0.5
    FACTORS = (-0.1, 0.1)
    OFFSETS = (-0.1, 0.1)
    _MAX_SEED = 2**32  # monai.utils.misc.MAX_SEED

    def __init__(self) -> None:
        self.set_random_state(seed=0)

    def set_random_state(self, seed: int) -> None:
        """Seed as MONAI's ``Compose.set_random_state(seed=seed)`` seeds its transforms."""
        def state(value: int) -> np.random.RandomState:
            return np.random.RandomState(np.int64(value) % self._MAX_SEED)

        compose = state(seed)
        seeds = [int(compose.randint(self._MAX_SEED, dtype="uint32")) for _ in range(5)]
        self._flips = [state(s) for s in seeds[:3]]
        # (wrapper, inner transform) of RandScaleIntensityd and RandShiftIntensityd
        self._scale = (state(seeds[3]), state(seeds[3]))
        self._shift = (state(seeds[4]), state(seeds[4]))

    def draw_flip(self) -> tuple[int, ...]:
        """The spatial axes (0-2) to mirror the next patch along."""
        return tuple(axis for axis, flip in enumerate(self._flips) if flip.rand() < self.PROB)

    def intensity_(self, image: torch.Tensor) -> None:
        """Draw the next patch's scale and shift and apply them to ``image`` ``(C, *P)``
        float32 in place, channel by channel: ``v * (1 + f)``, then ``v + o``.

        The same float32 tensor-by-Python-scalar ops as MONAI's ``ScaleIntensity`` and
        ``ShiftIntensity`` (in place instead of on copies), so the values are bit-identical.
        """
        factors = self._per_channel(*self._scale, self.FACTORS, image.shape[0])
        if factors is not None:
            for channel, factor in zip(image, factors, strict=True):
                channel.mul_(1 + factor)
        offsets = self._per_channel(*self._shift, self.OFFSETS, image.shape[0])
        if offsets is not None:
            for channel, offset in zip(image, offsets, strict=True):
                channel.add_(offset)

    def _per_channel(self, outer: np.random.RandomState, inner: np.random.RandomState,
                     bounds: tuple[float, float], channels: int) -> list[float] | None:
        if not outer.rand() < self.PROB:
            return None
        inner.rand()  # the inner transform's own "apply?" draw (prob 1.0): consumed, unused
        return [inner.uniform(low=bounds[0], high=bounds[1]) for _ in range(channels)]
