"""Experiment-level operations run by the workflow, not by jobs: setup and stale-run marking.

:func:`init_tracking` is the only function that creates a SQLite tracking DB and the only one
that raises for tracking failures (:class:`TrackingError`): a workflow without a working tracking
store should stop before starting jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from kdseg.tracking.client import _new_client, _redact, _sqlite_path
from kdseg.tracking.retry import _budget, _NotRetryable, _retry, _RetryBudgetExhausted
from kdseg.tracking.tags import CURRENT_TAG, RUN_KEY_TAG

if TYPE_CHECKING:  # only for annotations: importing mlflow at runtime costs seconds
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

_LOG = logging.getLogger("kdseg.tracking")  # one logger for the whole package

_SEARCH_PAGE_SIZE = 1000


class TrackingError(RuntimeError):
    """MLflow tracking could not be reached or set up (raised by :func:`init_tracking` only)."""


def init_tracking(
    uri: str, experiment: str, artifact_root: Path | None, *,
    retry_budget_s: float | None = None
) -> str:
    """Create the tracking DB (SQLite) and the experiment if needed; return the experiment id.

    Run once before any parallel job (a Snakemake localrule): parallel writers on a fresh SQLite
    DB corrupt it, and concurrent experiment creation misfiles runs into experiment 0. The
    experiment gets the explicit artifact location ``artifact_root.resolve().as_uri()`` (MLflow
    would otherwise use ``./mlruns`` relative to whichever cwd created it). Idempotent: an
    existing experiment is returned as is (a warning is logged if its artifact location differs).
    ``artifact_root=None`` leaves the location to an MLflow server (``mlflow-artifacts:/``, its
    ``--artifacts-destination``): jobs on any node then upload artifacts through the server
    instead of writing to a path that must be shared.

    Raises:
        TrackingError: naming the URI, when the backend cannot be reached or set up, or the
            experiment exists in the deleted state.
    """
    budget = _budget(retry_budget_s)
    if artifact_root is None and not uri.startswith(("http://", "https://")):
        raise TrackingError(f"tracking.artifact_root may only be null with an MLflow server "
                            f"(http:// URI); got {_redact(uri)!r}")
    artifact_uri = artifact_root.resolve().as_uri() if artifact_root is not None else None
    where = f"MLflow tracking URI {_redact(uri)!r}, experiment {experiment!r}"
    db_path = _sqlite_path(uri)
    try:
        if db_path is not None:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        if artifact_root is not None:
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


def _get_or_create_experiment(client: MlflowClient, name: str,
                              artifact_uri: str | None) -> str:
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
    if artifact_uri is not None and existing.artifact_location != artifact_uri:
        _LOG.warning(
            "MLflow experiment %r keeps its artifact location %s (requested %s); MLflow cannot "
            "move it",
            name,
            existing.artifact_location,
            artifact_uri,
        )
    return existing.experiment_id


def mark_stale_runs(
    uri: str,
    experiment_id: str,
    current_run_keys: Iterable[str],
    *,
    key_prefix: str = "",
    retry_budget_s: float | None = None,
) -> int:
    """Tag the experiment's kdseg runs ``kdseg.current`` = "true"/"false".

    A run is current when its ``kdseg.run_key`` is in ``current_run_keys``; runs without a run
    key (not made by kdseg) and runs whose key does not start with ``key_prefix`` (e.g. another
    dataset's ``"<dataset>/"``, sharing the experiment) are left alone, and tags already right
    are not rewritten.

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
            if run_key is None or not run_key.startswith(key_prefix):
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
