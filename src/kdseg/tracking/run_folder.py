"""Reading a run folder, the source of truth that :func:`sync_run_folder` mirrors into MLflow.

A run folder holds ``run.json`` (run key, run name, tags, params), ``history.csv`` (one row per
epoch) and, once evaluated, ``test_metrics.json``. Every malformed file raises
:class:`RunFolderError` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdseg.tracking.params import _finite_metrics, flatten_params
from kdseg.tracking.tags import _run_key_filter


class RunFolderError(ValueError):
    """A run folder is malformed; the message names the file and the problem."""


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
    """The JSON object in ``path`` (or in ``raw``, its already-read bytes).

    Raises:
        RunFolderError: a missing file, invalid JSON, or a top-level value that is not an object.
    """
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
    import pandas as pd  # lazy: importing pandas takes most of a second; only the sync needs it

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
