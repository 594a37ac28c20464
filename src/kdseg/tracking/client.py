"""Tracking URIs and explicit MLflow clients.

Supported backends: SQLite (``sqlite:///``) and an MLflow server (``http(s)://``); the
``./mlruns`` file store is refused (MLflow >= 3.13 refuses it too). Only explicit
:class:`mlflow.tracking.MlflowClient` objects are made, never MLflow's global fluent state
(``mlflow.start_run``), because several processes and tests run in parallel.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from kdseg.tracking.retry import _NotRetryable

if TYPE_CHECKING:  # only for annotations: importing mlflow at runtime costs seconds
    from mlflow.tracking import MlflowClient

_SQLITE_PREFIX = "sqlite:///"


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
    body, sep, query = uri.partition("?")
    if not body.startswith(_SQLITE_PREFIX) or body[len(_SQLITE_PREFIX) :] in ("", ":memory:"):
        raise ValueError(
            f"tracking URI {uri!r}: expected 'sqlite:///<file path>'; an in-memory or "
            "path-less SQLite DB cannot be shared by the workflow's processes"
        )
    path = Path(body[len(_SQLITE_PREFIX) :])
    if not path.is_absolute():
        path = base_dir.resolve() / path
    return f"{_SQLITE_PREFIX}{path.as_posix()}{sep}{query}"


def _sqlite_path(uri: str) -> Path | None:
    """Database file of a ``sqlite:///`` URI (relative paths are relative to the cwd, as in
    MLflow); None for non-SQLite URIs."""
    if not uri.lower().startswith(_SQLITE_PREFIX):
        return None
    return Path(uri.partition("?")[0][len(_SQLITE_PREFIX) :])


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
