"""MLflow mirror of kdseg's run folders: the only kdseg package that imports mlflow.

Principles:

* Files on disk are the truth; MLflow mirrors them. A training job must never fail or lose
  results because tracking is unavailable, slow or locked.
* Bounded retries, then disable: every job-side MLflow call is retried with jittered exponential
  backoff for at most ``retry_budget_s`` (default :data:`DEFAULT_RETRY_BUDGET_S`); after that the
  :class:`RunTracker` disables itself, logs one warning on the ``kdseg.tracking`` logger and lets
  the job continue.
* Idempotent sync by run key: runs are identified by the deterministic tag :data:`RUN_KEY_TAG`
  (not by MLflow's random run id), so reopening, retrying and :func:`sync_run_folder` always land
  on the same run; the sync later mirrors the finished run folder and fills any gaps.
* Only this package imports mlflow, and only lazily inside functions: ``import mlflow.tracking``
  takes 3-6 s, while ``import kdseg.tracking`` stays cheap for code that never logs.

Design choices worth knowing:

* Only explicit :class:`mlflow.tracking.MlflowClient` objects are used, never MLflow's global
  fluent state (``mlflow.start_run``), because several processes and tests run in parallel.
* Supported backends: SQLite (``sqlite:///``) and an MLflow server (``http(s)://``). The
  ``./mlruns`` file store is refused (MLflow >= 3.13 refuses it too).
* A fresh SQLite DB hit by parallel writers ends up half-migrated, so only :func:`init_tracking`
  creates one; job-side functions refuse (disable themselves) when the DB file is missing.
* Not thread-safe: use one :class:`RunTracker` per thread.

Modules: :mod:`.client` (URIs, clients), :mod:`.retry` (backoff budget, permanent vs transient
errors), :mod:`.params` (value conversions), :mod:`.tags` (kdseg's tags, run-key filter),
:mod:`.batch` (``log_batch`` requests), :mod:`.experiment` (workflow-side setup and stale-run
marking), :mod:`.tracker` (:class:`RunTracker`), :mod:`.run_folder` and :mod:`.sync`. Names with
a leading underscore are private to the package, shared between its modules; the public API is
what this module exports. All modules log on the one ``kdseg.tracking`` logger.
"""

from kdseg.tracking.client import resolve_tracking_uri
from kdseg.tracking.experiment import TrackingError, init_tracking, mark_stale_runs
from kdseg.tracking.params import flatten_params
from kdseg.tracking.retry import DEFAULT_RETRY_BUDGET_S
from kdseg.tracking.run_folder import RunFolder, RunFolderError, read_run_folder
from kdseg.tracking.sync import sync_run_folder
from kdseg.tracking.tags import (
    CURRENT_TAG,
    LOGGED_EPOCHS_TAG,
    RUN_KEY_TAG,
    TEST_METRICS_SHA_TAG,
    epoch_metrics_logged_tag,
)
from kdseg.tracking.tracker import RunTracker

__all__ = [
    "CURRENT_TAG",
    "DEFAULT_RETRY_BUDGET_S",
    "LOGGED_EPOCHS_TAG",
    "RUN_KEY_TAG",
    "TEST_METRICS_SHA_TAG",
    "RunFolder",
    "RunFolderError",
    "RunTracker",
    "TrackingError",
    "epoch_metrics_logged_tag",
    "flatten_params",
    "init_tracking",
    "mark_stale_runs",
    "read_run_folder",
    "resolve_tracking_uri",
    "sync_run_folder",
]
