"""MLflow mirror of kdseg's run folders: the only kdseg module that imports mlflow.

Files on disk are the truth; MLflow mirrors them. A training job must never fail or lose results
because tracking is unavailable, slow or locked, so every job-side MLflow call here is retried with
jittered exponential backoff for a bounded time (``retry_budget_s``, default
:data:`DEFAULT_RETRY_BUDGET_S`), after which the tracker disables itself, logs one warning on the
``kdseg.tracking`` logger and lets the job continue. :func:`sync_run_folder` later mirrors the
finished run folder idempotently and fills any gaps.

Runs are identified by a deterministic tag :data:`RUN_KEY_TAG` (not by MLflow's random run id), so
reopening, retrying and syncing always land on the same run.

Design choices worth knowing:

* Only explicit :class:`mlflow.tracking.MlflowClient` objects are used, never MLflow's global
  fluent state (``mlflow.start_run``), because several processes and tests run in parallel.
* Supported backends: SQLite (``sqlite:///``) and an MLflow server (``http(s)://``). The
  ``./mlruns`` file store is refused (MLflow >= 3.13 refuses it too).
* A fresh SQLite DB hit by parallel writers ends up half-migrated, so only :func:`init_tracking`
  creates one; job-side functions refuse (disable themselves) when the DB file is missing.
* mlflow is imported lazily inside functions: ``import mlflow.tracking`` takes 3-6 s, while
  ``import kdseg.tracking`` stays cheap for code that never logs.
* Not thread-safe: use one :class:`RunTracker` per thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:  # only for annotations: importing mlflow at runtime costs seconds
    from mlflow.entities import Metric, Param, Run, RunTag
    from mlflow.tracking import MlflowClient

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

_LOG = logging.getLogger("kdseg.tracking")

RUN_KEY_TAG = "kdseg.run_key"
"""Tag holding the deterministic run key; the only way kdseg finds its runs again."""
LOGGED_EPOCHS_TAG = "kdseg.logged_epochs"
"""Tag holding the last epoch whose metrics reached MLflow (progress marker for the sync)."""
TEST_METRICS_SHA_TAG = "kdseg.test_metrics_sha"
"""Tag holding the sha1 of the ``test_metrics.json`` content last mirrored into MLflow."""
CURRENT_TAG = "kdseg.current"
"""Tag set by :func:`mark_stale_runs`: ``"true"`` for runs of the current workflow config."""

DEFAULT_RETRY_BUDGET_S = 20.0
"""Default total time (s) one MLflow operation may spend retrying before tracking gives up."""

# Backoff schedule: 0.25, 0.5, 1, 2, 4, 4, ... s, each scaled by a random factor in [0.5, 1] so
# that parallel jobs blocked on the same SQLite lock do not retry in lockstep.
_BACKOFF_INITIAL_S = 0.25
_BACKOFF_CAP_S = 4.0

# MLflow's own limits (mlflow.utils.validation); restated so that mlflow need not be imported.
_MAX_PARAM_VALUE_LENGTH = 6000
_MAX_TAG_VALUE_LENGTH = 8000
_MAX_PARAMS_TAGS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_SEARCH_PAGE_SIZE = 1000

_RUN_STATUSES = frozenset({"RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"})

# MlflowException error codes that will not go away by retrying (bad input, missing or deleted
# entity, auth). Everything else (locked SQLite -> TEMPORARILY_UNAVAILABLE, refused connection ->
# INTERNAL_ERROR, HTTP 5xx, OSError) is treated as transient.
_PERMANENT_ERROR_CODES = frozenset(
    {
        "BAD_REQUEST",
        "ENDPOINT_NOT_FOUND",
        "INVALID_PARAMETER_VALUE",
        "INVALID_STATE",
        "PERMISSION_DENIED",
        "RESOURCE_ALREADY_EXISTS",
        "RESOURCE_DOES_NOT_EXIST",
        "UNAUTHENTICATED",
    }
)

_T = TypeVar("_T")


class TrackingError(RuntimeError):
    """MLflow tracking could not be reached or set up (raised by :func:`init_tracking` only)."""


class RunFolderError(ValueError):
    """A run folder is malformed; the message names the file and the problem."""


class _NotRetryable(Exception):
    """A job-side precondition failed in a way retrying cannot fix (e.g. missing SQLite DB)."""


class _RetryBudgetExhausted(Exception):
    """A transient failure outlasted the retry budget."""


# --------------------------------------------------------------------------------------------
# URIs and clients
# --------------------------------------------------------------------------------------------


def resolve_tracking_uri(uri: str, base_dir: Path) -> str:
    """Make a tracking URI independent of the working directory.

    ``sqlite:///results/mlflow.db`` (relative path) becomes ``sqlite:////<base_dir>/results/...``
    with ``base_dir`` resolved; absolute SQLite URIs and ``http(s)://`` URIs are returned
    unchanged. A query string on a SQLite URI is kept.

    Raises:
        ValueError: for an in-memory SQLite DB (not shareable between processes) and for anything
            else, e.g. a plain directory: the ``./mlruns`` file store is not supported.
    """
    scheme = urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        if not urlsplit(uri).netloc:
            raise ValueError(f"tracking URI {uri!r} has no host; expected http(s)://host:port")
        return uri
    if scheme == "sqlite":
        return _resolve_sqlite_uri(uri, base_dir)
    raise ValueError(
        f"unsupported MLflow tracking URI {uri!r}: the ./mlruns file store (a plain directory or "
        "file:// URI) is not supported (MLflow >= 3.13 refuses it as well); use "
        "'sqlite:///path/to/mlflow.db' (relative paths are taken from the workflow directory) or "
        "'http(s)://host:port' for an MLflow server"
    )


def _resolve_sqlite_uri(uri: str, base_dir: Path) -> str:
    """``sqlite:///rel/x.db`` -> ``sqlite:////abs/base/rel/x.db`` (see resolve_tracking_uri)."""
    prefix = "sqlite:///"
    body, sep, query = uri.partition("?")
    if not body.startswith(prefix) or body[len(prefix) :] in ("", ":memory:"):
        raise ValueError(
            f"tracking URI {uri!r}: expected 'sqlite:///<file path>'; an in-memory or "
            "path-less SQLite DB cannot be shared by the workflow's processes"
        )
    path = Path(body[len(prefix) :])
    if not path.is_absolute():
        path = base_dir.resolve() / path
    return f"{prefix}{path.as_posix()}{sep}{query}"


def _sqlite_path(uri: str) -> Path | None:
    """Database file of a ``sqlite:///`` URI (relative paths are relative to the cwd, as in
    MLflow); None for non-SQLite URIs."""
    if not uri.lower().startswith("sqlite:///"):
        return None
    return Path(uri.partition("?")[0][len("sqlite:///") :])


def _redact(uri: str) -> str:
    """The URI without a ``user:password@`` part, for log and error messages."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def _new_client(uri: str, *, allow_create_db: bool = False) -> MlflowClient:
    """An explicit MlflowClient for ``uri``.

    Raises:
        _NotRetryable: a SQLite DB that does not exist yet and ``allow_create_db`` is False
            (parallel writers on a fresh DB corrupt it; :func:`init_tracking` must create it).
    """
    db_path = _sqlite_path(uri)
    if db_path is not None and not allow_create_db and not db_path.is_file():
        raise _NotRetryable(
            f"SQLite tracking DB {db_path} does not exist; run init_tracking() (the workflow's "
            "tracking-init rule) before starting jobs"
        )
    # MLflow's HTTP client retries 7 times with backoff factor 2 (minutes) and waits 120 s per
    # request by default, which would blow our bounded retry budget: kdseg retries itself, so
    # MLflow's own retries are switched off unless the operator set these variables explicitly.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


# --------------------------------------------------------------------------------------------
# Retry
# --------------------------------------------------------------------------------------------


def _backoff_delay(attempt: int) -> float:
    """Nominal pause (s) after failed attempt number ``attempt`` (0-based), before jitter."""
    return min(_BACKOFF_CAP_S, _BACKOFF_INITIAL_S * 2.0**attempt)


def _is_permanent(exc: BaseException) -> bool:
    """True when retrying ``exc`` cannot help (bad input, missing entity, our own precondition)."""
    if isinstance(exc, _NotRetryable):
        return True
    # Duck-typed on MlflowException.error_code so that mlflow need not be imported here.
    return getattr(exc, "error_code", None) in _PERMANENT_ERROR_CODES


def _retry(op: Callable[[], _T], what: str, budget_s: float) -> _T:
    """Call ``op`` until it succeeds, a permanent error occurs or ``budget_s`` seconds passed.

    A single attempt is bounded by the backend, not here (SQLite busy timeout 20 s, HTTP timeout
    30 s), so the worst case is about ``budget_s`` plus one attempt.

    Raises:
        Exception: a permanent error, unchanged.
        _RetryBudgetExhausted: the last transient error (chained) once the budget is spent.
    """
    deadline = time.monotonic() + budget_s
    attempt = 0
    while True:
        try:
            return op()
        except Exception as exc:
            if _is_permanent(exc):
                raise
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _RetryBudgetExhausted(
                    f"{what} still failing after {attempt + 1} attempt(s) in {budget_s:g} s: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            time.sleep(min(remaining, _backoff_delay(attempt) * random.uniform(0.5, 1.0)))
            attempt += 1


def _budget(retry_budget_s: float | None) -> float:
    """Resolve the optional retry budget argument; negative budgets are a caller bug."""
    budget = DEFAULT_RETRY_BUDGET_S if retry_budget_s is None else float(retry_budget_s)
    if not budget >= 0:
        raise ValueError(f"retry_budget_s must be >= 0 seconds, got {retry_budget_s!r}")
    return budget


# --------------------------------------------------------------------------------------------
# Pure helpers: params, metrics, tags
# --------------------------------------------------------------------------------------------


def flatten_params(config: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    """Flatten a nested config into dotted MLflow param names.

    ``{"train": {"lr": 0.01}, "method": {"temperature": 4}}`` ->
    ``{"train.lr": 0.01, "method.temperature": 4}``. Lists and tuples become their ``str`` of
    the list (``"[1, 2]"``), an empty mapping becomes ``"{}"`` (so the key is not lost), other
    values are kept as they are (:class:`RunTracker` converts them with ``str``). ``prefix`` is
    prepended with a dot.

    Raises:
        ValueError: a non-string key, or two entries flattening to the same name
            (``{"a.b": 1, "a": {"b": 2}}``).
    """
    flat: dict[str, object] = {}
    for key, value in config.items():
        if not isinstance(key, str):
            where = prefix or "<top level>"
            raise ValueError(f"config key {key!r} under {where!r} is not a string")
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping):
            entries = flatten_params(value, name) if value else {name: "{}"}
        elif isinstance(value, list | tuple):
            entries = {name: str(list(value))}
        else:
            entries = {name: value}
        clashes = flat.keys() & entries.keys()
        if clashes:
            raise ValueError(f"config entries flatten to the same param name(s) {sorted(clashes)}")
        flat.update(entries)
    return flat


def epoch_metrics_logged_tag(epoch: int) -> dict[str, str]:
    """Tags recording that metrics up to ``epoch`` reached MLflow.

    The trainer passes them with the epoch's metrics
    (``tracker.log_metrics(m, step=epoch, tags=epoch_metrics_logged_tag(epoch))``) or calls
    ``tracker.set_tags(...)`` afterwards; :func:`sync_run_folder` then logs only later epochs.
    """
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
    return {LOGGED_EPOCHS_TAG: str(epoch)}


def _param_value(value: object) -> str:
    """MLflow param value: ``str(value)`` truncated to MLflow's 6000-character limit."""
    return str(value)[:_MAX_PARAM_VALUE_LENGTH]


def _tag_value(value: object) -> str:
    """MLflow tag value: ``str(value)`` truncated to MLflow's 8000-character limit."""
    return str(value)[:_MAX_TAG_VALUE_LENGTH]


def _finite_metrics(metrics: Mapping[str, object]) -> dict[str, float]:
    """Metrics as floats, without NaN/inf (not logged: MLflow rejects or mangles some of them).

    Raises:
        ValueError: a value that is not a real number (names the key).
    """
    finite: dict[str, float] = {}
    for key, value in metrics.items():
        try:
            number = float(value)  # type: ignore[arg-type]  # numpy/torch scalars included
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metric {key!r}: {value!r} is not a real number") from exc
        if math.isfinite(number):
            finite[key] = number
    return finite


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


def _run_key_filter(run_key: str) -> str:
    """MLflow search filter selecting runs tagged ``RUN_KEY_TAG == run_key``.

    MLflow's filter grammar has no escape character: a value is quoted with whichever quote it
    does not contain.

    Raises:
        ValueError: an empty run key or one containing both quote characters.
    """
    if not isinstance(run_key, str) or not run_key:
        raise ValueError(f"run_key must be a non-empty string, got {run_key!r}")
    if "'" not in run_key:
        quoted = f"'{run_key}'"
    elif '"' not in run_key:
        quoted = f'"{run_key}"'
    else:
        raise ValueError(
            f"run_key {run_key!r} contains both ' and \"; MLflow search filters cannot express it"
        )
    return f"tags.`{RUN_KEY_TAG}` = {quoted}"


def _now_ms() -> int:
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


# --------------------------------------------------------------------------------------------
# Experiment setup (workflow side, raises)
# --------------------------------------------------------------------------------------------


def init_tracking(
    uri: str, experiment: str, artifact_root: Path, *, retry_budget_s: float | None = None
) -> str:
    """Create the tracking DB (SQLite) and the experiment if needed; return the experiment id.

    Run once before any parallel job (a Snakemake localrule): parallel writers on a fresh SQLite
    DB corrupt it, and concurrent experiment creation misfiles runs into experiment 0. The
    experiment gets the explicit artifact location ``artifact_root.resolve().as_uri()`` (MLflow
    would otherwise use ``./mlruns`` relative to whichever cwd created it). Idempotent: an
    existing experiment is returned as is (a warning is logged if its artifact location differs).

    Raises:
        TrackingError: naming the URI, when the backend cannot be reached or set up, or the
            experiment exists in the deleted state.
    """
    budget = _budget(retry_budget_s)
    artifact_uri = artifact_root.resolve().as_uri()
    where = f"MLflow tracking URI {_redact(uri)!r}, experiment {experiment!r}"
    db_path = _sqlite_path(uri)
    try:
        if db_path is not None:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        artifact_root.mkdir(parents=True, exist_ok=True)
        client = _retry(lambda: _new_client(uri, allow_create_db=True), "connect", budget)
        experiment_id = _retry(
            lambda: _get_or_create_experiment(client, experiment, artifact_uri),
            "get or create experiment",
            budget,
        )
    except (_RetryBudgetExhausted, OSError) as exc:
        raise TrackingError(f"{where}: cannot initialise tracking: {exc}") from exc
    except Exception as exc:  # permanent MLflow errors: re-raised with the URI named
        raise TrackingError(f"{where}: {type(exc).__name__}: {exc}") from exc
    return experiment_id


def _get_or_create_experiment(client: MlflowClient, name: str, artifact_uri: str) -> str:
    """Experiment id by name, creating it with ``artifact_uri`` if absent (one attempt)."""
    existing = client.get_experiment_by_name(name)
    if existing is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_uri)
        except Exception as exc:
            # Lost a creation race against another init: fall through to the lookup.
            if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                raise
            existing = client.get_experiment_by_name(name)
            if existing is None:
                raise
    if existing.lifecycle_stage != "active":
        raise _NotRetryable(
            f"experiment {name!r} (id {existing.experiment_id}) is deleted; restore it "
            "(`mlflow experiments restore`) or choose another experiment name"
        )
    if existing.artifact_location != artifact_uri:
        _LOG.warning(
            "MLflow experiment %r keeps its artifact location %s (requested %s); MLflow cannot "
            "move it",
            name,
            existing.artifact_location,
            artifact_uri,
        )
    return existing.experiment_id


# --------------------------------------------------------------------------------------------
# Job side: RunTracker (never raises for tracking failures)
# --------------------------------------------------------------------------------------------


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
        """Use :meth:`open`; direct construction is for this module."""
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
        if status not in _RUN_STATUSES - {"RUNNING", "SCHEDULED"}:
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
        entities = _param_entities(new) if new else []
        for chunk in _chunks(entities, _MAX_PARAMS_TAGS_PER_BATCH):
            self._call("log params", lambda c, r, chunk=chunk: _log_batch(c, r, params=chunk))


def _log_batch(
    client: MlflowClient,
    run_id: str,
    metrics: Sequence[Metric] = (),
    params: Sequence[Param] = (),
    tags: Sequence[RunTag] = (),
) -> None:
    # synchronous=True: MLflow's optional async logging would swallow failures we must retry.
    client.log_batch(run_id, metrics=metrics, params=params, tags=tags, synchronous=True)


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
    _LOG.warning(
        "MLflow tracking disabled for run %s (%s): %s failed: %s. The job continues; results are "
        "on disk and sync_run_folder() will mirror them into MLflow later.",
        run_key,
        _redact(uri),
        what,
        exc,
    )


# --------------------------------------------------------------------------------------------
# Run folders and the idempotent sync
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunFolder:
    """What :func:`sync_run_folder` mirrors from a run folder.

    Attributes:
        run_key, run_name, tags, params: from ``run.json`` (params flattened, values as stored).
        history: ``(epoch, {metric: value})`` sorted by epoch, NaN/inf cells dropped.
        test_metrics: from ``test_metrics.json`` (finite values only); empty when absent.
        test_metrics_sha: sha1 hex digest of the ``test_metrics.json`` bytes; None when absent.
    """

    run_key: str
    run_name: str
    tags: dict[str, str]
    params: dict[str, object]
    history: list[tuple[int, dict[str, float]]]
    test_metrics: dict[str, float]
    test_metrics_sha: str | None


def read_run_folder(run_dir: Path) -> RunFolder:
    """Read ``run.json``, ``history.csv`` and the optional ``test_metrics.json`` of a run folder.

    Raises:
        RunFolderError: a missing or malformed file; the message names the file and the problem.
    """
    meta = _read_run_json(run_dir / "run.json")
    history = _read_history(run_dir / "history.csv")
    test_path = run_dir / "test_metrics.json"
    test_metrics: dict[str, float] = {}
    sha: str | None = None
    if test_path.is_file():
        raw = test_path.read_bytes()
        test_metrics = _read_test_metrics(test_path, raw)
        sha = hashlib.sha1(raw, usedforsecurity=False).hexdigest()
    return RunFolder(
        run_key=meta["run_key"],
        run_name=meta["run_name"],
        tags=meta["tags"],
        params=meta["params"],
        history=history,
        test_metrics=test_metrics,
        test_metrics_sha=sha,
    )


def _load_json_object(path: Path, raw: bytes | None = None) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes() if raw is None else raw)
    except FileNotFoundError as exc:
        raise RunFolderError(f"{path}: file not found") from exc
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_run_json(path: Path) -> dict[str, Any]:
    """Validated ``run.json``: run_key/run_name strings, tags str->str, params flattened."""
    data = _load_json_object(path)
    for key in ("run_key", "run_name"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise RunFolderError(
                f"{path}: {key!r} must be a non-empty string, got {data.get(key)!r}"
            )
    try:
        _run_key_filter(data["run_key"])
    except ValueError as exc:
        raise RunFolderError(f"{path}: {exc}") from exc
    tags = data.get("tags", {})
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise RunFolderError(f"{path}: 'tags' must be an object of string values")
    params = data.get("params", {})
    if not isinstance(params, dict):
        raise RunFolderError(f"{path}: 'params' must be an object, got {type(params).__name__}")
    try:
        flat_params = flatten_params(params)
    except ValueError as exc:
        raise RunFolderError(f"{path}: 'params': {exc}") from exc
    return {
        "run_key": data["run_key"],
        "run_name": data["run_name"],
        "tags": tags,
        "params": flat_params,
    }


def _read_history(path: Path) -> list[tuple[int, dict[str, float]]]:
    """``history.csv`` -> ``[(epoch, {metric: finite value})]`` sorted by epoch.

    Column ``epoch`` holds unique non-negative integers; every other column is a metric whose
    empty/NaN cells mean "not logged that epoch".
    """
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except FileNotFoundError as exc:
        raise RunFolderError(f"{path}: file not found") from exc
    except (OSError, ValueError) as exc:  # pandas' ParserError/EmptyDataError are ValueErrors
        raise RunFolderError(f"{path}: not a readable CSV table: {exc}") from exc
    if "epoch" not in table.columns:
        raise RunFolderError(f"{path}: no 'epoch' column (columns: {list(table.columns)})")
    epochs = pd.to_numeric(table["epoch"], errors="coerce")
    bad = table["epoch"][epochs.isna() | (epochs < 0) | (epochs % 1 != 0)]
    if len(bad):
        raise RunFolderError(f"{path}: 'epoch' must hold non-negative integers, got {bad.tolist()}")
    if epochs.duplicated().any():
        raise RunFolderError(f"{path}: duplicate epochs {sorted(set(epochs[epochs.duplicated()]))}")
    metrics = table.drop(columns="epoch")
    for column in metrics.columns:
        try:
            metrics[column] = pd.to_numeric(metrics[column], errors="raise").astype(float)
        except (TypeError, ValueError) as exc:
            raise RunFolderError(f"{path}: column {column!r} is not numeric: {exc}") from exc
    rows = zip(epochs.astype(int).tolist(), metrics.to_dict(orient="records"), strict=True)
    return sorted((epoch, _finite_metrics(values)) for epoch, values in rows)


def _read_test_metrics(path: Path, raw: bytes) -> dict[str, float]:
    """``test_metrics.json`` -> finite metrics; every value must be a JSON number."""
    data = _load_json_object(path, raw)
    wrong = [
        key
        for key, value in data.items()
        if isinstance(value, bool) or not isinstance(value, int | float)
    ]
    if wrong:
        raise RunFolderError(f"{path}: values of {wrong} are not numbers")
    return _finite_metrics(data)


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
    from mlflow.entities import Metric

    timestamp = _now_ms()
    metrics = [
        Metric(key, value, timestamp, epoch)
        for epoch, values in batch
        for key, value in values.items()
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


# --------------------------------------------------------------------------------------------
# Housekeeping
# --------------------------------------------------------------------------------------------


def mark_stale_runs(
    uri: str,
    experiment_id: str,
    current_run_keys: Iterable[str],
    *,
    retry_budget_s: float | None = None,
) -> int:
    """Tag the experiment's kdseg runs ``kdseg.current`` = "true"/"false".

    A run is current when its ``kdseg.run_key`` is in ``current_run_keys``; runs without a run
    key (not made by kdseg) are left alone, and tags already right are not rewritten.

    Returns:
        The number of stale (non-current) kdseg runs tagged "false", including those that were
        already tagged; on a tracking failure (warning logged) the count reached so far.

    Raises:
        TypeError: ``current_run_keys`` is a single string (a caller bug: it would be iterated
            character by character).
    """
    if isinstance(current_run_keys, str):
        raise TypeError("current_run_keys must be a collection of run keys, not one string")
    current = frozenset(current_run_keys)
    budget = _budget(retry_budget_s)
    stale = 0
    try:
        client = _retry(lambda: _new_client(uri), "connect", budget)
        for run in _iter_runs(client, experiment_id, budget):
            run_key = run.data.tags.get(RUN_KEY_TAG)
            if run_key is None:
                continue
            flag = "true" if run_key in current else "false"
            if run.data.tags.get(CURRENT_TAG) != flag:
                run_id = run.info.run_id
                _retry(
                    lambda r=run_id, f=flag: client.set_tag(r, CURRENT_TAG, f, synchronous=True),
                    "set tag",
                    budget,
                )
            stale += flag == "false"
    except Exception as exc:
        _LOG.warning(
            "MLflow (%s): marking stale runs of experiment %s stopped after %d stale run(s): %s",
            _redact(uri),
            experiment_id,
            stale,
            exc,
        )
    return stale


def _iter_runs(client: MlflowClient, experiment_id: str, budget_s: float) -> Iterator[Run]:
    """All active runs of the experiment, page by page (each page fetch retried)."""
    page_token: str | None = None
    while True:
        page = _retry(
            lambda token=page_token: client.search_runs(
                [experiment_id], max_results=_SEARCH_PAGE_SIZE, page_token=token
            ),
            "search runs",
            budget_s,
        )
        yield from page
        page_token = page.token
        if not page_token:
            return
