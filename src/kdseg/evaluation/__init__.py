"""Evaluation: per-case Dice, HD95, NSD, sensitivity and specificity per region (``metrics``),
folder evaluation (``evaluate``)."""

from kdseg.evaluation.evaluate import evaluate_folder
from kdseg.evaluation.metrics import (
    EMPTY_RULES,
    EMPTY_STATES,
    HIGHER_IS_BETTER,
    METRICS,
    check_empty_rule,
    dice,
    empty_state,
    evaluate_case,
    hd95,
    image_diagonal_mm,
    normalized_surface_dice,
    region_metrics,
    sensitivity,
    specificity,
)

__all__ = [
    "EMPTY_RULES",
    "EMPTY_STATES",
    "HIGHER_IS_BETTER",
    "METRICS",
    "check_empty_rule",
    "dice",
    "empty_state",
    "evaluate_case",
    "evaluate_folder",
    "hd95",
    "image_diagonal_mm",
    "normalized_surface_dice",
    "region_metrics",
    "sensitivity",
    "specificity",
]
