"""Label conventions: dataset label values, training classes and evaluation regions.

BraTS 2017–2021 store 0 background, 1 necrotic / non-enhancing core (NCR/NET), 2 edema (ED),
4 enhancing tumour (ET); label 3 is unused. BraTS 2023+ uses 3 for ET. Networks are trained with
a mutually exclusive softmax over contiguous classes ``0..K-1`` (here ``0 bg, 1 NCR, 2 ED, 3 ET``)
and evaluated on the nested regions WT = {NCR, ED, ET}, TC = {NCR, ET}, ET = {ET}.

The Medical Segmentation Decathlon's Task01 stores 1 edema, 2 non-enhancing tumour, 3 enhancing
tumour (``msd_brats``). Other datasets give their own map in the config (``dataset.labels`` as a
mapping). This is the single module that knows these numbers; everything else asks it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
    def label_dtype(self) -> type[np.unsignedinteger]:
        """Smallest unsigned dtype holding every stored value (uint8, or uint16 for maps such as
        MM-WHS's 205..850)."""
        return np.uint8 if max(self.label_values) <= 255 else np.uint16

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
        """Map class ids ``0..K-1`` back to stored label values (:attr:`label_dtype`)."""
        lut = np.asarray(self.label_values, dtype=self.label_dtype)
        return lut[classes.astype(np.int64)]

    def region_masks(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        """Boolean mask per evaluation region from stored label values, shape as ``labels``."""
        return {name: np.isin(labels, values) for name, values in self.regions.items()}


def convention_from_mapping(
    spec: Mapping[str, Any], where: str = "dataset.labels"
) -> LabelConvention:
    """A convention given in the config as a mapping (any dataset with its own label map)::

        name: cardiac                                 # recorded in every metrics row
        classes: {background: 0, LV: 500, MYO: 205, RV: 600}   # class name -> stored value
        regions: {LV: [500], MYO: [205], RV: [600]}   # evaluation region -> stored values

    Training classes ``0..K-1`` follow the stored values in ascending order, and regions are
    ordered by how many label values they hold (largest first: WT, TC, ET for nested tumour
    regions), ties by name. Neither depends on the order of a mapping, which YAML/JSON tools
    (and Snakemake's params) may not keep. Value 0 is the background and must be present;
    ``regions`` defaults to one region per foreground class. At most 256 classes. Errors name
    ``where`` and the offending key.
    """
    known = {"name", "classes", "regions"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}.name: a non-empty name is required")
    classes = spec.get("classes")
    if not isinstance(classes, Mapping) or len(classes) < 2:
        raise ValueError(f"{where}.classes: map at least two class names to stored label values")
    values = list(classes.values())
    if any(not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 65535 for v in values):
        raise ValueError(f"{where}.classes: stored label values must be integers 0..65535, "
                         f"got {values}")
    if 0 not in values:
        raise ValueError(f"{where}.classes: one class (the background) must be stored as 0, "
                         f"got {values}")
    if len(set(values)) != len(values):
        raise ValueError(f"{where}.classes: repeated stored values in {values}")
    if len(values) > 256:
        raise ValueError(f"{where}.classes: at most 256 classes, got {len(values)}")
    ordered = sorted(classes.items(), key=lambda item: item[1])
    names = [str(k) for k, _ in ordered]
    values = [v for _, v in ordered]
    regions_spec = spec.get("regions") or {n: [v] for n, v in zip(names[1:], values[1:],
                                                                  strict=True)}
    if not isinstance(regions_spec, Mapping):
        raise ValueError(f"{where}.regions: must map region names to lists of stored values")
    regions: dict[str, tuple[int, ...]] = {}
    for region, members in regions_spec.items():
        members = [members] if isinstance(members, int) else list(members)
        stray = sorted(set(members) - set(values[1:]))
        if not members or stray:
            raise ValueError(f"{where}.regions.{region}: values {stray or members} are not "
                             f"foreground values of {where}.classes ({values[1:]})")
        regions[str(region)] = tuple(sorted(int(v) for v in set(members)))
    regions = dict(sorted(regions.items(), key=lambda item: (-len(item[1]), item[0])))
    return LabelConvention(name=name, label_values=tuple(values), class_names=tuple(names),
                           regions=regions)


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

# Medical Segmentation Decathlon Task01_BrainTumour (BraTS 2016/17 cases relabelled):
# 1 edema, 2 non-enhancing tumour, 3 enhancing tumour; regions as in BraTS.
MSD_BRATS = LabelConvention(
    name="msd_brats",
    label_values=(0, 1, 2, 3),
    class_names=("background", "ED", "NET", "ET"),
    regions={"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)},
)

CONVENTIONS: dict[str, LabelConvention] = {
    c.name: c for c in (BRATS_LEGACY, BRATS_2023, MSD_BRATS)
}


def get_convention(spec: str | Mapping[str, Any]) -> LabelConvention:
    """The convention named ``spec`` (``brats``, ``brats2023``, ``msd_brats``) or given as a
    mapping (:func:`convention_from_mapping`); unknown names list the known ones."""
    if isinstance(spec, Mapping):
        return convention_from_mapping(spec)
    try:
        return CONVENTIONS[spec]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown label convention {spec!r}; known: {sorted(CONVENTIONS)} "
            f"(or a mapping with name, classes, regions)"
        ) from None
