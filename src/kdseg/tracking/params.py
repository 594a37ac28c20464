"""Pure conversions of kdseg values into what MLflow accepts: params, tag values, metrics."""

from __future__ import annotations

import math
from collections.abc import Mapping

# MLflow's own limits (mlflow.utils.validation); restated so that mlflow need not be imported.
_MAX_PARAM_VALUE_LENGTH = 6000
_MAX_TAG_VALUE_LENGTH = 8000


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
