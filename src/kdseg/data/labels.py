"""Label conventions: dataset label values, training classes and evaluation regions.

BraTS 2017–2021 store 0 background, 1 necrotic / non-enhancing core (NCR/NET), 2 edema (ED),
4 enhancing tumour (ET); label 3 is unused. BraTS 2023+ uses 3 for ET. Networks are trained with
a mutually exclusive softmax over contiguous classes ``0..K-1`` (here ``0 bg, 1 NCR, 2 ED, 3 ET``)
and evaluated on the nested regions WT = {NCR, ED, ET}, TC = {NCR, ET}, ET = {ET}.

This is the single module that knows these numbers; everything else asks it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabelConvention:
    """How a dataset edition numbers its labels.

    Attributes:
        name: convention name used in the config (``dataset.labels``).
        label_values: stored label value of each training class, index = class id
            (class 0 is background).
        class_names: short name of each training class.
        regions: evaluation region name -> stored label values it contains.
    """

    name: str
    label_values: tuple[int, ...]
    class_names: tuple[str, ...]
    regions: dict[str, tuple[int, ...]]

    @property
    def num_classes(self) -> int:
        return len(self.label_values)

    @property
    def region_names(self) -> tuple[str, ...]:
        return tuple(self.regions)

    def check_values(self, labels: np.ndarray, source: str) -> None:
        """Raise ``ValueError`` naming ``source`` if ``labels`` holds values outside this
        convention."""
        found = np.unique(labels)
        unexpected = sorted(set(found.tolist()) - set(self.label_values))
        if unexpected:
            raise ValueError(
                f"{source}: unexpected label values {unexpected}; the '{self.name}' convention "
                f"allows only {list(self.label_values)}"
            )

    def to_classes(self, labels: np.ndarray, source: str = "labels") -> np.ndarray:
        """Map stored label values to contiguous class ids ``0..K-1`` (uint8). Validates first."""
        self.check_values(labels, source)
        lut = np.zeros(max(self.label_values) + 1, dtype=np.uint8)
        for class_id, value in enumerate(self.label_values):
            lut[value] = class_id
        return lut[labels.astype(np.int64)]

    def to_labels(self, classes: np.ndarray) -> np.ndarray:
        """Map class ids ``0..K-1`` back to stored label values (uint8)."""
        lut = np.asarray(self.label_values, dtype=np.uint8)
        return lut[classes.astype(np.int64)]

    def region_masks(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        """Boolean mask per evaluation region from stored label values, shape as ``labels``."""
        return {name: np.isin(labels, values) for name, values in self.regions.items()}


BRATS_LEGACY = LabelConvention(
    name="brats",
    label_values=(0, 1, 2, 4),
    class_names=("background", "NCR", "ED", "ET"),
    regions={"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
)

BRATS_2023 = LabelConvention(
    name="brats2023",
    label_values=(0, 1, 2, 3),
    class_names=("background", "NCR", "ED", "ET"),
    regions={"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)},
)

CONVENTIONS: dict[str, LabelConvention] = {c.name: c for c in (BRATS_LEGACY, BRATS_2023)}


def get_convention(name: str) -> LabelConvention:
    """Look up a label convention by its config name; unknown names list the known ones."""
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown label convention {name!r}; known: {sorted(CONVENTIONS)}"
        ) from None
