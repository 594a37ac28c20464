"""The method registry: ``METHODS`` maps a method *kind* (``methods.<name>.kind``) to its class.

Its keys equal :data:`kdseg.distill.options.METHOD_OPTIONS`, which holds the option schemas and
is importable without torch (Snakemake validates the config with it at parse time).
"""

from __future__ import annotations

from typing import Any

from kdseg.distill.base import Distiller
from kdseg.distill.baseline import Baseline
from kdseg.distill.logit_kd import LogitKD
from kdseg.distill.options import METHOD_OPTIONS, parse_method

METHODS: dict[str, type[Distiller]] = {
    "baseline": Baseline,
    "logit_kd": LogitKD,
}

assert set(METHODS) == set(METHOD_OPTIONS), "METHODS and METHOD_OPTIONS must list the same kinds"


def build_distiller(block: dict[str, Any]) -> Distiller:
    """Build a method from a resolved block ``{"name": .., "kind": .., <options>}``."""
    block = dict(block)
    name = block.pop("name", block.get("kind"))
    kind, options = parse_method(str(name), block)
    return METHODS[kind](options)


__all__ = ["METHODS", "Distiller", "build_distiller"]
