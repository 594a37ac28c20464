"""Evaluation: per-case Dice / HD95 per region (``metrics``), folder evaluation (``evaluate``)."""

from kdseg.evaluation.evaluate import evaluate_folder
from kdseg.evaluation.metrics import (
    EMPTY_RULES,
    EMPTY_STATES,
    check_empty_rule,
    dice,
    empty_state,
    evaluate_case,
    hd95,
    image_diagonal_mm,
    region_metrics,
)

__all__ = [
    "EMPTY_RULES",
    "EMPTY_STATES",
    "check_empty_rule",
    "dice",
    "empty_state",
    "evaluate_case",
    "evaluate_folder",
    "hd95",
    "image_diagonal_mm",
    "region_metrics",
]
