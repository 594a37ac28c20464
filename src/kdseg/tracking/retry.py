"""Bounded retries: jittered exponential backoff within a time budget, then give up.

A failure is *permanent* when retrying cannot fix it (bad input, missing or deleted entity, auth,
one of our own preconditions) and *transient* otherwise (locked SQLite DB, refused connection,
HTTP 5xx, OSError). Permanent errors are re-raised at once; transient ones are retried until the
budget is spent and then reported as :class:`_RetryBudgetExhausted`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

DEFAULT_RETRY_BUDGET_S = 20.0
"""Default total time (s) one MLflow operation may spend retrying before tracking gives up."""

# Backoff schedule: 0.25, 0.5, 1, 2, 4, 4, ... s, each scaled by a random factor in [0.5, 1] so
# that parallel jobs blocked on the same SQLite lock do not retry in lockstep.
_BACKOFF_INITIAL_S = 0.25
_BACKOFF_CAP_S = 4.0

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


class _NotRetryable(Exception):
    """A job-side precondition failed in a way retrying cannot fix (e.g. missing SQLite DB)."""


class _RetryBudgetExhausted(Exception):
    """A transient failure outlasted the retry budget."""


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
