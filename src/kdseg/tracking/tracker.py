"""Job side: :class:`RunTracker`, one MLflow run that never fails the job.

Every call is retried for a bounded time; when tracking stays unavailable the tracker logs one
warning and disables itself, and :func:`sync_run_folder` fills the gap later from the run folder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from kdseg.tracking.batch import (
    _MAX_METRICS_PER_BATCH,
    _MAX_PARAMS_TAGS_PER_BATCH,
    _chunks,
    _log_batch,
    _metric_entities,
    _now_ms,
    _param_entities,
    _tag_entities,
)
from kdseg.tracking.client import _new_client, _redact
from kdseg.tracking.params import _finite_metrics, _param_value, _tag_value
from kdseg.tracking.retry import _budget, _retry, _RetryBudgetExhausted
from kdseg.tracking.tags import RUN_KEY_TAG, _run_key_filter

if TYPE_CHECKING:  # only for annotations: importing mlflow at runtime costs seconds
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

_LOG = logging.getLogger("kdseg.tracking")  # one logger for the whole package

_TERMINAL_STATUSES = frozenset({"FINISHED", "FAILED", "KILLED"})


class RunTracker:
    """One MLflow run, found or created by its run key; degrades to a no-op when tracking fails.

    Every method retries transient failures for up to ``retry_budget_s`` seconds; if that is not
    enough the tracker logs one warning and disables itself (``ok`` becomes False, later calls do
    nothing). Permanent errors of a single call (e.g. a rejected metric name) are logged as a
    warning and skipped without disabling. No method raises for tracking failures.
    """

    def __init__(
        self,
        client: MlflowClient | None,
        run_id: str | None,
        run_key: str,
        uri: str,
        retry_budget_s: float,
        tags_at_open: Mapping[str, str] | None = None,
    ) -> None:
        """Use :meth:`open`; direct construction is for this package (and its tests)."""
        self._client = client
        self._run_id = run_id
        self._run_key = run_key
        self._uri = uri
        self._retry_budget_s = retry_budget_s
        self._tags_at_open = dict(tags_at_open or {})
        self._disabled = client is None or run_id is None

    @classmethod
    def open(
        cls,
        uri: str,
        experiment_id: str,
        run_key: str,
        run_name: str,
        tags: dict[str, str],
        params: dict[str, object],
        *,
        retry_budget_s: float | None = None,
    ) -> RunTracker:
        """Find the run tagged ``RUN_KEY_TAG == run_key`` in ``experiment_id`` or create it.

        The run is set RUNNING and ``tags`` are (re)applied. ``params`` are logged as
        ``str(value)`` truncated to 6000 characters, in batches of <= 100; params already on the
        run with the same value are skipped, and one already present with a *different* value
        keeps its old value (MLflow params are immutable) with a warning. The SQLite DB must
        exist (see :func:`init_tracking`).

        Returns:
            A tracker; a disabled one (``ok`` False, warning logged) when tracking failed.

        Raises:
            ValueError: only for caller bugs: an empty run key, one with both quote characters,
                or a negative retry budget.
        """
        budget = _budget(retry_budget_s)
        search_filter = _run_key_filter(run_key)
        try:
            client = _retry(lambda: _new_client(uri), "connect", budget)
            run, created = _retry(
                lambda: _find_or_create_run(
                    client, experiment_id, run_name, {**tags, RUN_KEY_TAG: run_key}, search_filter
                ),
                "find or create run",
                budget,
            )
        except Exception as exc:
            _warn_disabled(run_key, uri, "opening the run", exc)
            return cls(None, None, run_key, uri, budget)
        tracker = cls(client, run.info.run_id, run_key, uri, budget, run.data.tags)
        if run.info.status != "RUNNING":
            tracker._call("set status RUNNING", lambda c, r: c.update_run(r, status="RUNNING"))
        if not created:  # a new run already carries the tags
            tracker.set_tags(tags)
        tracker._log_new_params(run.data.params, params)
        return tracker

    @property
    def ok(self) -> bool:
        """True while the tracker is connected to a run and has not disabled itself."""
        return not self._disabled

    @property
    def run_id(self) -> str | None:
        """MLflow run id, None when opening failed."""
        return self._run_id

    def log_metrics(
        self, metrics: Mapping[str, float], step: int, *, tags: Mapping[str, str] | None = None
    ) -> None:
        """Log ``metrics`` at ``step`` in one ``log_batch`` request (more only past 1000 values).

        NaN and infinite values are skipped silently (they mean "not measured"); a value that
        is not a number is skipped with a warning. ``tags`` (e.g. :func:`epoch_metrics_logged_tag`)
        travel in the same request; the store writes metrics before tags, so an interruption can
        cause a later re-log but never a gap.
        """
        if not self.ok:
            return
        values: dict[str, float] = {}
        for key, value in metrics.items():
            try:
                values.update(_finite_metrics({key: value}))
            except ValueError as exc:
                _LOG.warning("MLflow run %s, step %d: %s; skipped", self._run_key, step, exc)
        self._log_batch(f"log metrics at step {step}", values, step, tags or {})

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set (overwrite) run tags; values are ``str``-ed and truncated to 8000 characters."""
        entities = _tag_entities(tags) if self.ok else []
        for chunk in _chunks(entities, _MAX_PARAMS_TAGS_PER_BATCH):
            self._call("set tags", lambda c, r, chunk=chunk: _log_batch(c, r, tags=chunk))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload a file or directory to the run's artifacts (under ``artifact_path``)."""
        if not self.ok:
            return
        if not path.exists():
            _LOG.warning(
                "MLflow run %s: artifact %s does not exist; not logged", self._run_key, path
            )
            return
        self._call(
            f"log artifact {path.name}",
            lambda c, r: c.log_artifact(r, str(path), artifact_path),
        )

    def finish(self, status: str = "FINISHED") -> None:
        """Mark the run terminated with ``status`` (FINISHED, FAILED or KILLED).

        Raises:
            ValueError: an unknown status (a caller bug, checked even when disabled).
        """
        if status not in _TERMINAL_STATUSES:
            raise ValueError(f"run status must be FINISHED, FAILED or KILLED, got {status!r}")
        self._call(f"terminate ({status})", lambda c, r: c.set_terminated(r, status=status))

    # -- internals -----------------------------------------------------------------------------

    def _call(self, what: str, op: Callable[[MlflowClient, str], object]) -> bool:
        """Run ``op(client, run_id)`` with retries; True on success. Never raises."""
        if self._disabled or self._client is None or self._run_id is None:
            return False
        client, run_id = self._client, self._run_id
        try:
            _retry(lambda: op(client, run_id), what, self._retry_budget_s)
        except _RetryBudgetExhausted as exc:
            self._disabled = True
            _warn_disabled(self._run_key, self._uri, what, exc)
            return False
        except Exception as exc:  # permanent error of this one call: skip it, stay enabled
            _LOG.warning(
                "MLflow run %s (%s): %s failed and was skipped: %s: %s",
                self._run_key,
                run_id,
                what,
                type(exc).__name__,
                exc,
            )
            return False
        return True

    def _log_batch(
        self, what: str, values: Mapping[str, float], step: int, tags: Mapping[str, str]
    ) -> bool:
        """Metrics (chunks of <= 1000) then ``tags`` with the last chunk; True if all arrived."""
        timestamp = _now_ms()
        metric_chunks = list(
            _chunks(_metric_entities(values, step, timestamp), _MAX_METRICS_PER_BATCH)
        ) or [[]]
        tag_entities = _tag_entities(tags)
        for index, chunk in enumerate(metric_chunks):
            last = index == len(metric_chunks) - 1
            chunk_tags = tag_entities if last else []
            if not chunk and not chunk_tags:
                continue
            if not self._call(
                what, lambda c, r, m=chunk, t=chunk_tags: _log_batch(c, r, metrics=m, tags=t)
            ):
                return False
        return True

    def _log_new_params(self, existing: Mapping[str, str], params: Mapping[str, object]) -> None:
        """Log params missing from ``existing``; warn about (and keep) changed values."""
        wanted = {key: _param_value(value) for key, value in params.items()}
        new = {key: value for key, value in wanted.items() if key not in existing}
        changed = sorted(
            key for key in wanted.keys() & existing.keys() if wanted[key] != existing[key]
        )
        if changed:
            _LOG.warning(
                "MLflow run %s already has different values for params %s; MLflow params are "
                "immutable, the old values are kept (the run key should include a config hash)",
                self._run_key,
                changed,
            )
        for chunk in _chunks(_param_entities(new), _MAX_PARAMS_TAGS_PER_BATCH):
            self._call("log params", lambda c, r, chunk=chunk: _log_batch(c, r, params=chunk))


def _find_or_create_run(
    client: MlflowClient,
    experiment_id: str,
    run_name: str,
    tags: Mapping[str, str],
    search_filter: str,
) -> tuple[Run, bool]:
    """``(run, created)``: the oldest active run matching ``search_filter`` (the run-key filter),
    else a new run with ``tags`` (which include the run key)."""
    found = client.search_runs(
        [experiment_id],
        filter_string=search_filter,
        max_results=2,
        order_by=["attributes.start_time ASC"],
    )
    if len(found) > 1:
        # Only possible if two processes opened the same key at the same instant.
        _LOG.warning("MLflow: several runs match %s; using the oldest", search_filter)
    if found:
        return found[0], False
    tag_values = {key: _tag_value(value) for key, value in tags.items()}
    return client.create_run(experiment_id, tags=tag_values, run_name=run_name), True


def _warn_disabled(run_key: str, uri: str, what: str, exc: BaseException) -> None:
    """The one warning a tracker logs when it gives up (names the run and the redacted URI)."""
    _LOG.warning(
        "MLflow tracking disabled for run %s (%s): %s failed: %s. The job continues; results are "
        "on disk and sync_run_folder() will mirror them into MLflow later.",
        run_key,
        _redact(uri),
        what,
        exc,
    )
