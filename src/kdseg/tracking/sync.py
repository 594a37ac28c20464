"""The idempotent sync: mirror a finished run folder into MLflow, filling whatever is missing.

Progress is read from tags on the run (:data:`LOGGED_EPOCHS_TAG`, :data:`TEST_METRICS_SHA_TAG`),
so the sync can be rerun at any time, and after live logging that stopped part-way, without
duplicating metric steps.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from kdseg.tracking.batch import (
    _log_batch,
    _metric_entities,
    _now_ms,
    _pack_epochs,
    _tag_entities,
)
from kdseg.tracking.run_folder import read_run_folder
from kdseg.tracking.tags import LOGGED_EPOCHS_TAG, TEST_METRICS_SHA_TAG, epoch_metrics_logged_tag
from kdseg.tracking.tracker import RunTracker

_LOG = logging.getLogger("kdseg.tracking")  # one logger for the whole package


def sync_run_folder(
    run_dir: Path, uri: str, experiment_id: str, *, retry_budget_s: float | None = None
) -> bool:
    """Mirror a finished run folder into MLflow, idempotently; True when everything arrived.

    Finds or creates the run by its run key (params and tags as in :meth:`RunTracker.open`),
    logs only the ``history.csv`` epochs after the run's ``kdseg.logged_epochs`` tag (the live
    trainer keeps that tag current), logs ``test_metrics.json`` at step 0 only when its sha1
    differs from the ``kdseg.test_metrics_sha`` tag, then marks the run FINISHED. Progress tags
    travel in the same request as their metrics (written after them), so rerunning duplicates no
    metric step; only a crash inside that one request could make the next sync re-log a batch.

    Raises:
        RunFolderError: a malformed run folder (names the file). Tracking failures never raise:
            they log a warning and return False.
    """
    folder = read_run_folder(run_dir)
    tracker = RunTracker.open(
        uri,
        experiment_id,
        folder.run_key,
        folder.run_name,
        folder.tags,
        folder.params,
        retry_budget_s=retry_budget_s,
    )
    last_logged = _logged_epoch(tracker._tags_at_open, folder.run_key)
    pending = [(epoch, values) for epoch, values in folder.history if epoch > last_logged]
    for batch in _pack_epochs(pending):
        if not tracker.ok:
            break
        _log_epoch_batch(tracker, batch)
    if (
        tracker.ok
        and folder.test_metrics_sha is not None
        and tracker._tags_at_open.get(TEST_METRICS_SHA_TAG) != folder.test_metrics_sha
    ):
        tracker.log_metrics(
            folder.test_metrics, step=0, tags={TEST_METRICS_SHA_TAG: folder.test_metrics_sha}
        )
    tracker.finish("FINISHED")
    return tracker.ok


def _log_epoch_batch(tracker: RunTracker, batch: Sequence[tuple[int, Mapping[str, float]]]) -> None:
    """Log a batch of whole epochs in one request, with the progress tag of its last epoch.

    An epoch with more than 1000 values (never in practice) falls back to one request per epoch.
    """
    last_epoch = batch[-1][0]
    progress = epoch_metrics_logged_tag(last_epoch)
    if len(batch) == 1:
        tracker.log_metrics(batch[0][1], step=last_epoch, tags=progress)
        return
    timestamp = _now_ms()
    metrics = [
        metric for epoch, values in batch for metric in _metric_entities(values, epoch, timestamp)
    ]
    tracker._call(
        f"log epochs {batch[0][0]}-{last_epoch}",
        lambda c, r: _log_batch(c, r, metrics=metrics, tags=_tag_entities(progress)),
    )


def _logged_epoch(tags: Mapping[str, str], run_key: str) -> int:
    """Last epoch recorded by the ``kdseg.logged_epochs`` tag; -1 when none (or unreadable)."""
    value = tags.get(LOGGED_EPOCHS_TAG)
    if value is None:
        return -1
    try:
        return int(value)
    except ValueError:
        _LOG.warning(
            "MLflow run %s: tag %s=%r is not an epoch number; relogging all epochs",
            run_key,
            LOGGED_EPOCHS_TAG,
            value,
        )
        return -1
