"""The MLflow tags kdseg writes, and the search filter that finds a run by its run key.

Runs are identified by the deterministic tag :data:`RUN_KEY_TAG`, not by MLflow's random run id,
so reopening, retrying and syncing always land on the same run.
"""

from __future__ import annotations

RUN_KEY_TAG = "kdseg.run_key"
"""Tag holding the deterministic run key; the only way kdseg finds its runs again."""
LOGGED_EPOCHS_TAG = "kdseg.logged_epochs"
"""Tag holding the last epoch whose metrics reached MLflow (progress marker for the sync)."""
TEST_METRICS_SHA_TAG = "kdseg.test_metrics_sha"
"""Tag holding the sha1 of the ``test_metrics.json`` content last mirrored into MLflow."""
CURRENT_TAG = "kdseg.current"
"""Tag set by :func:`mark_stale_runs`: ``"true"`` for runs of the current workflow config."""


def epoch_metrics_logged_tag(epoch: int) -> dict[str, str]:
    """Tags recording that metrics up to ``epoch`` reached MLflow.

    The trainer passes them with the epoch's metrics
    (``tracker.log_metrics(m, step=epoch, tags=epoch_metrics_logged_tag(epoch))``) or calls
    ``tracker.set_tags(...)`` afterwards; :func:`sync_run_folder` then logs only later epochs.
    """
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
    return {LOGGED_EPOCHS_TAG: str(epoch)}


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
