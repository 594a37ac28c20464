"""Shaping ``log_batch`` requests: MLflow entities, per-request size limits, the request itself.

Everything that builds :mod:`mlflow.entities` objects imports mlflow lazily, inside the function.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

from kdseg.tracking.params import _tag_value

if TYPE_CHECKING:  # only for annotations: importing mlflow at runtime costs seconds
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

# MLflow's per-request limits (mlflow.utils.validation); restated so mlflow need not be imported.
_MAX_PARAMS_TAGS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000

_T = TypeVar("_T")


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    """Consecutive slices of at most ``size`` items (MLflow's per-request batch limits)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _pack_epochs(
    history: Sequence[tuple[int, Mapping[str, float]]], limit: int = _MAX_METRICS_PER_BATCH
) -> list[list[tuple[int, Mapping[str, float]]]]:
    """Group consecutive epochs into batches of at most ``limit`` metric values.

    Epochs are never split across batches unless a single epoch alone exceeds ``limit`` (then it
    forms its own batch and the caller splits it), so a progress tag sent with a batch always
    covers whole epochs.
    """
    batches: list[list[tuple[int, Mapping[str, float]]]] = []
    size = 0
    for epoch, values in history:
        if not batches or size + len(values) > limit:
            batches.append([])
            size = 0
        batches[-1].append((epoch, values))
        size += len(values)
    return batches


def _now_ms() -> int:
    """Current time in milliseconds since the epoch, MLflow's metric timestamp unit."""
    return int(time.time() * 1000)


def _metric_entities(values: Mapping[str, float], step: int, timestamp_ms: int) -> list[Metric]:
    from mlflow.entities import Metric

    return [Metric(key, value, timestamp_ms, step) for key, value in values.items()]


def _tag_entities(tags: Mapping[str, object]) -> list[RunTag]:
    from mlflow.entities import RunTag

    return [RunTag(key, _tag_value(value)) for key, value in tags.items()]


def _param_entities(params: Mapping[str, str]) -> list[Param]:
    from mlflow.entities import Param

    return [Param(key, value) for key, value in params.items()]


def _log_batch(
    client: MlflowClient,
    run_id: str,
    metrics: Sequence[Metric] = (),
    params: Sequence[Param] = (),
    tags: Sequence[RunTag] = (),
) -> None:
    # synchronous=True: MLflow's optional async logging would swallow failures we must retry.
    client.log_batch(run_id, metrics=metrics, params=params, tags=tags, synchronous=True)
