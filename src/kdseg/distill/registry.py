"""The method registry: ``METHODS`` maps a method *kind* (``methods.<name>.kind``) to its class.

Its keys equal :data:`kdseg.distill.options.METHOD_OPTIONS`, which holds the option schemas and
is importable without torch (Snakemake validates the config with it at parse time).
"""

from __future__ import annotations

from typing import Any

from kdseg.config import ModelConfig
from kdseg.distill.barlow import BarlowKD
from kdseg.distill.base import Distiller
from kdseg.distill.baseline import Baseline
from kdseg.distill.kdnet import KDNet
from kdseg.distill.logit_kd import LogitKD
from kdseg.distill.options import METHOD_OPTIONS, parse_method
from kdseg.distill.pmkl import PMKL
from kdseg.distill.ummkd import UMMKD
from kdseg.models.factory import tap_channels

METHODS: dict[str, type[Distiller]] = {
    "baseline": Baseline,
    "logit_kd": LogitKD,
    "kdnet": KDNet,
    "pmkl": PMKL,
    "ummkd": UMMKD,
    "barlow_kd": BarlowKD,
}

assert set(METHODS) == set(METHOD_OPTIONS), "METHODS and METHOD_OPTIONS must list the same kinds"


def build_distiller(block: dict[str, Any], model: ModelConfig, num_classes: int) -> Distiller:
    """Build a method from a resolved block ``{"name": .., "kind": .., <options>}`` for
    networks built from ``model`` with ``num_classes`` outputs (heads need the tapped
    features' channel counts)."""
    block = dict(block)
    name = block.pop("name", block.get("kind"))
    kind, options = parse_method(str(name), block)
    return METHODS[kind](options, tap_channels(model), num_classes)


__all__ = ["METHODS", "Distiller", "build_distiller"]
