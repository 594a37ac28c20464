"""Tests for kdseg.tracking against real SQLite MLflow stores in tmp_path.

MLflow DB creation costs seconds, so one DB (and experiment) is shared per module; every test
uses its own run keys (or its own experiment) so tests stay independent.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import runpy
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdseg.tracking import (
    CURRENT_TAG,
    LOGGED_EPOCHS_TAG,
    RUN_KEY_TAG,
    TEST_METRICS_SHA_TAG,
    RunFolderError,
    RunTracker,
    TrackingError,
    epoch_metrics_logged_tag,
    flatten_params,
    init_tracking,
    mark_stale_runs,
    read_run_folder,
    resolve_tracking_uri,
    sync_run_folder,
)
from kdseg.tracking import batch as tracking_batch
from kdseg.tracking import retry as tracking_retry

UNREACHABLE = "http://127.0.0.1:9"  # discard port: connection refused at once
SHORT_BUDGET_S = 0.5


@dataclass(frozen=True)
class Store:
    uri: str
    experiment_id: str
    artifact_root: Path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/db/mlflow.db"  # parent dir missing on purpose: init creates it
    artifact_root = root / "artifacts"
    return Store(uri, init_tracking(uri, "kdseg-test", artifact_root), artifact_root)


@pytest.fixture(scope="module")
def client(store: Store):  # -> mlflow.tracking.MlflowClient
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store.uri)


def _runs_with_key(client, experiment_id: str, run_key: str) -> list:
    return [
        run
        for run in client.search_runs([experiment_id], max_results=1000)
        if run.data.tags.get(RUN_KEY_TAG) == run_key
    ]


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _kdseg_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "kdseg.tracking" and r.levelno == logging.WARNING
    ]


# ------------------------------------------------------------------------------------------
# resolve_tracking_uri
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:///results/mlflow.db", "sqlite:////base/results/mlflow.db"),
        ("sqlite:///mlflow.db?timeout=30", "sqlite:////base/mlflow.db?timeout=30"),
        ("sqlite:////abs/mlflow.db", "sqlite:////abs/mlflow.db"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("https://mlflow.example.org/", "https://mlflow.example.org/"),
    ],
)
def test_resolve_tracking_uri(uri: str, expected: str) -> None:
    assert resolve_tracking_uri(uri, Path("/base")) == expected


def test_resolve_tracking_uri_relative_base_is_made_absolute(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///x.db", Path("wf")) == f"sqlite:///{tmp_path}/wf/x.db"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("./mlruns", "file store"),
        ("mlruns", "file store"),
        ("/abs/mlruns", "file store"),
        ("file:///abs/mlruns", "file store"),
        ("", "file store"),
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
        ("http://", "no host"),
    ],
)
def test_resolve_tracking_uri_rejects(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_tracking_uri(uri, Path("/base"))


# ------------------------------------------------------------------------------------------
# init_tracking
# ------------------------------------------------------------------------------------------


def test_init_tracking_is_idempotent_and_sets_artifact_location(store: Store, client) -> None:
    assert init_tracking(store.uri, "kdseg-test", store.artifact_root) == store.experiment_id
    experiment = client.get_experiment(store.experiment_id)
    assert experiment.name == "kdseg-test"
    assert experiment.artifact_location == store.artifact_root.resolve().as_uri()


def test_init_tracking_unreachable_raises_naming_uri() -> None:
    start = time.monotonic()
    with pytest.raises(TrackingError, match=r"127\.0\.0\.1:9"):
        init_tracking(UNREACHABLE, "x", Path("unused"), retry_budget_s=SHORT_BUDGET_S)
    assert time.monotonic() - start < 5


def test_init_tracking_rejects_deleted_experiment(store: Store, client, tmp_path) -> None:
    experiment_id = init_tracking(store.uri, "deleted-exp", tmp_path)
    client.delete_experiment(experiment_id)
    with pytest.raises(TrackingError, match="deleted"):
        init_tracking(store.uri, "deleted-exp", tmp_path)


# ------------------------------------------------------------------------------------------
# RunTracker
# ------------------------------------------------------------------------------------------


def test_open_twice_finds_the_same_run(store: Store, client) -> None:
    tags = {"kdseg.method": "kd", "kdseg.fold": "0"}
    params = {"train.lr": 0.01, "method.temperature": 4, "data.modalities": "['t1', 't2']"}
    first = RunTracker.open(store.uri, store.experiment_id, "key-open", "kd-f0", tags, params)
    assert first.ok and first.run_id
    first.finish()
    assert client.get_run(first.run_id).info.status == "FINISHED"

    tags = {**tags, "kdseg.git_sha": "def456"}  # tags are (re)applied to an existing run
    second = RunTracker.open(store.uri, store.experiment_id, "key-open", "kd-f0", tags, params)
    assert second.run_id == first.run_id
    assert len(_runs_with_key(client, store.experiment_id, "key-open")) == 1
    run = client.get_run(first.run_id)
    assert run.info.status == "RUNNING"  # reopened
    assert run.info.run_name == "kd-f0"
    assert run.data.params == {key: str(value) for key, value in params.items()}
    assert {**tags, RUN_KEY_TAG: "key-open"}.items() <= run.data.tags.items()


def test_run_key_with_quote_is_found_again(store: Store) -> None:
    key = "it's-a-key"
    first = RunTracker.open(store.uri, store.experiment_id, key, "q", {}, {})
    second = RunTracker.open(store.uri, store.experiment_id, key, "q", {}, {})
    assert first.ok and second.run_id == first.run_id


def test_invalid_run_key_is_a_caller_error(store: Store) -> None:
    with pytest.raises(ValueError, match="both"):
        RunTracker.open(store.uri, store.experiment_id, "a'b\"c", "q", {}, {})
    with pytest.raises(ValueError, match="non-empty"):
        RunTracker.open(store.uri, store.experiment_id, "", "q", {}, {})


def test_params_chunked_truncated_and_changed_values_kept(store: Store, client, caplog) -> None:
    params: dict[str, object] = {f"p.{i:03d}": i for i in range(150)}  # > 100: two batches
    params["long"] = "x" * 7000
    tracker = RunTracker.open(store.uri, store.experiment_id, "key-params", "p", {}, params)
    logged = client.get_run(tracker.run_id).data.params
    assert len(logged) == 151
    assert logged["p.149"] == "149"
    assert logged["long"] == "x" * 6000

    with caplog.at_level(logging.WARNING, logger="kdseg.tracking"):
        again = RunTracker.open(
            store.uri, store.experiment_id, "key-params", "p", {}, {**params, "p.000": 99, "new": 1}
        )
    assert again.ok
    logged = client.get_run(tracker.run_id).data.params
    assert logged["p.000"] == "0"  # old value kept
    assert logged["new"] == "1"
    warnings = _kdseg_warnings(caplog)
    assert len(warnings) == 1 and "p.000" in warnings[0]


def test_metrics_tags_artifacts_arrive_and_nan_is_skipped(store: Store, client, tmp_path) -> None:
    tracker = RunTracker.open(store.uri, store.experiment_id, "key-metrics", "m", {}, {})
    tracker.log_metrics({"train/loss": 1.5, "val/dice/WT": math.nan}, step=0)
    tracker.log_metrics({"train/loss": 0.5, "val/dice/WT": 0.75, "val/x": math.inf}, step=1)
    tracker.set_tags({"kdseg.git_sha": "abc123"})
    artifact = tmp_path / "config.yaml"
    artifact.write_text("train: {lr: 0.01}\n")
    tracker.log_artifact(artifact, artifact_path="config")
    tracker.finish("FAILED")
    assert tracker.ok

    assert _history(client, tracker.run_id, "train/loss") == [(0, 1.5), (1, 0.5)]
    assert _history(client, tracker.run_id, "val/dice/WT") == [(1, 0.75)]
    assert client.get_metric_history(tracker.run_id, "val/x") == []
    run = client.get_run(tracker.run_id)
    assert run.data.tags["kdseg.git_sha"] == "abc123"
    assert run.info.status == "FAILED"
    assert [f.path for f in client.list_artifacts(tracker.run_id, "config")] == [
        "config/config.yaml"
    ]
    stored = store.artifact_root / tracker.run_id / "artifacts" / "config" / "config.yaml"
    assert stored.read_text() == artifact.read_text()


def test_non_numeric_metric_is_skipped_with_warning(store: Store, client, caplog) -> None:
    tracker = RunTracker.open(store.uri, store.experiment_id, "key-nonnum", "m", {}, {})
    with caplog.at_level(logging.WARNING, logger="kdseg.tracking"):
        tracker.log_metrics({"train/loss": 0.5, "train/bad": "high"}, step=3)  # type: ignore[dict-item]
    assert tracker.ok
    assert _history(client, tracker.run_id, "train/loss") == [(3, 0.5)]
    assert client.get_metric_history(tracker.run_id, "train/bad") == []
    assert "'train/bad'" in _kdseg_warnings(caplog)[0]


def test_finish_rejects_unknown_status(store: Store) -> None:
    tracker = RunTracker.open(store.uri, store.experiment_id, "key-status", "s", {}, {})
    with pytest.raises(ValueError, match="DONE"):
        tracker.finish("DONE")


def test_unreachable_tracking_disables_without_raising(caplog) -> None:
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="kdseg.tracking"):
        tracker = RunTracker.open(
            UNREACHABLE, "1", "key-x", "x", {"a": "b"}, {"p": 1}, retry_budget_s=SHORT_BUDGET_S
        )
        tracker.log_metrics({"loss": 1.0}, step=0)
        tracker.set_tags(epoch_metrics_logged_tag(0))
        tracker.log_artifact(Path(__file__))
        tracker.finish()
    elapsed = time.monotonic() - start
    assert not tracker.ok and tracker.run_id is None
    warnings = _kdseg_warnings(caplog)
    assert len(warnings) == 1
    assert "disabled" in warnings[0] and "127.0.0.1:9" in warnings[0]
    assert SHORT_BUDGET_S <= elapsed < 5  # it did retry, within the budget


def test_missing_sqlite_db_is_not_created_by_jobs(tmp_path, caplog) -> None:
    db = tmp_path / "never-initialised.db"
    with caplog.at_level(logging.WARNING, logger="kdseg.tracking"):
        tracker = RunTracker.open(f"sqlite:///{db}", "0", "k", "k", {}, {})
    assert not tracker.ok
    assert not db.exists()
    assert "init_tracking" in _kdseg_warnings(caplog)[0]


class _FlakyClient:
    """Stands in for MlflowClient: log_batch fails with ``error`` ``failures`` times."""

    def __init__(self, error: Exception, failures: int) -> None:
        self.error = error
        self.failures = failures
        self.calls = 0

    def log_batch(self, run_id, metrics=(), params=(), tags=(), synchronous=None) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error


class _MlflowLikeError(Exception):
    def __init__(self, error_code: str) -> None:
        super().__init__(error_code)
        self.error_code = error_code


def _tracker_with(client: _FlakyClient, budget_s: float) -> RunTracker:
    return RunTracker(client, "run-id", "key-flaky", "sqlite:///unused.db", budget_s)  # type: ignore[arg-type]


def test_transient_failure_is_retried_then_succeeds() -> None:
    client = _FlakyClient(_MlflowLikeError("TEMPORARILY_UNAVAILABLE"), failures=2)
    tracker = _tracker_with(client, budget_s=5.0)
    tracker.log_metrics({"loss": 1.0}, step=0)
    assert tracker.ok and client.calls == 3


def test_transient_failure_past_budget_disables_with_one_warning(caplog) -> None:
    client = _FlakyClient(_MlflowLikeError("TEMPORARILY_UNAVAILABLE"), failures=10**6)
    tracker = _tracker_with(client, budget_s=0.3)
    with caplog.at_level(logging.WARNING, logger="kdseg.tracking"):
        tracker.log_metrics({"loss": 1.0}, step=0)
        calls_when_disabled = client.calls
        tracker.log_metrics({"loss": 1.0}, step=1)
        tracker.finish()
    assert not tracker.ok
    assert calls_when_disabled > 1 and client.calls == calls_when_disabled
    assert len(_kdseg_warnings(caplog)) == 1


def test_permanent_failure_is_skipped_not_retried(caplog) -> None:
    client = _FlakyClient(_MlflowLikeError("INVALID_PARAMETER_VALUE"), failures=1)
    tracker = _tracker_with(client, budget_s=5.0)
    with caplog.at_level(logging.WARNING, logger="kdseg.tracking"):
        tracker.log_metrics({"bad key?": 1.0}, step=0)
    assert tracker.ok and client.calls == 1
    tracker.log_metrics({"loss": 1.0}, step=1)
    assert client.calls == 2
    assert "skipped" in _kdseg_warnings(caplog)[0]


def test_retry_budget_bounds_time() -> None:
    def always_fails() -> None:
        raise ConnectionError("down")

    start = time.monotonic()
    with pytest.raises(tracking_retry._RetryBudgetExhausted, match="down"):
        tracking_retry._retry(always_fails, "op", budget_s=0.4)
    assert 0.4 <= time.monotonic() - start < 1.0


def test_backoff_delays_double_up_to_cap() -> None:
    assert [tracking_retry._backoff_delay(i) for i in range(6)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]


# ------------------------------------------------------------------------------------------
# Pure helpers
# ------------------------------------------------------------------------------------------


def test_flatten_params_golden() -> None:
    config = {
        "train": {"lr": 0.01, "epochs": 2, "aug": {}},
        "method": {"temperature": 4, "weights": [0.5, 0.5]},
        "seed": None,
    }
    assert flatten_params(config) == {
        "train.lr": 0.01,
        "train.epochs": 2,
        "train.aug": "{}",
        "method.temperature": 4,
        "method.weights": "[0.5, 0.5]",
        "seed": None,
    }
    assert flatten_params({"lr": 1}, prefix="train") == {"train.lr": 1}


def test_flatten_params_errors() -> None:
    with pytest.raises(ValueError, match=r"a\.b"):
        flatten_params({"a.b": 1, "a": {"b": 2}})
    with pytest.raises(ValueError, match="'train'"):
        flatten_params({"train": {1: 2}})


_keys = st.text(alphabet="abcxyz_", min_size=1, max_size=4)
_nested = st.recursive(
    st.integers() | st.floats(allow_nan=False) | st.text(max_size=3),
    lambda children: st.dictionaries(_keys, children, min_size=1, max_size=3),
    max_leaves=10,
)


def _unflatten(flat: Mapping[str, object]) -> dict[str, object]:
    nested: dict[str, object] = {}
    for name, value in flat.items():
        *parents, leaf = name.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})  # type: ignore[assignment]
        node[leaf] = value  # type: ignore[index]
    return nested


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(_keys, _nested, max_size=3))
def test_flatten_params_roundtrip(config: dict[str, object]) -> None:
    flat = flatten_params(config)
    assert _unflatten(flat) == config
    assert all(not isinstance(value, Mapping) for value in flat.values())


def test_epoch_metrics_logged_tag() -> None:
    assert epoch_metrics_logged_tag(3) == {LOGGED_EPOCHS_TAG: "3"}
    for bad in (-1, 1.0, True):
        with pytest.raises(ValueError):
            epoch_metrics_logged_tag(bad)  # type: ignore[arg-type]


def test_pack_epochs_keeps_epochs_whole() -> None:
    history = [(0, {"a": 1.0, "b": 2.0}), (1, {"a": 1.0}), (2, {"a": 1.0, "b": 1.0}), (3, {})]
    batches = tracking_batch._pack_epochs(history, limit=3)
    assert [[epoch for epoch, _ in batch] for batch in batches] == [[0, 1], [2, 3]]
    assert tracking_batch._pack_epochs([], limit=3) == []


# ------------------------------------------------------------------------------------------
# Run folders and sync
# ------------------------------------------------------------------------------------------

HISTORY_CSV = """epoch,train/loss,val/dice/WT,val/dice/ET
0,1.0,0.25,
1,0.8,,
2,0.6,0.5,0.125
3,0.4,0.75,nan
"""
EXPECTED = {
    "train/loss": [(0, 1.0), (1, 0.8), (2, 0.6), (3, 0.4)],
    "val/dice/WT": [(0, 0.25), (2, 0.5), (3, 0.75)],
    "val/dice/ET": [(2, 0.125)],
}


def _write_run_folder(run_dir: Path, run_key: str, test_metrics: dict | None) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "run_key": run_key,
        "run_name": "kd-flair-f0-s1",
        "tags": {"kdseg.stage": "train", "kdseg.method": "kd"},
        "params": {"train.lr": 0.01, "method.temperature": 4},
    }
    (run_dir / "run.json").write_text(json.dumps(meta))
    (run_dir / "history.csv").write_text(HISTORY_CSV)
    if test_metrics is not None:
        (run_dir / "test_metrics.json").write_text(json.dumps(test_metrics))
    return run_dir


def _metric_histories(client, run_id: str) -> dict[str, list[tuple[int, float]]]:
    return {key: _history(client, run_id, key) for key in EXPECTED}


def test_read_run_folder(tmp_path) -> None:
    folder = read_run_folder(_write_run_folder(tmp_path, "k", {"test/dice/WT": 0.5}))
    assert folder.history[1] == (1, {"train/loss": 0.8})
    assert folder.test_metrics == {"test/dice/WT": 0.5}
    assert folder.params == {"train.lr": 0.01, "method.temperature": 4}
    assert len(folder.test_metrics_sha or "") == 40


def test_sync_logs_everything_once(store: Store, client, tmp_path) -> None:
    test_metrics = {"test/dice/WT": 0.8, "test/hd95/WT": 4.5}
    run_dir = _write_run_folder(tmp_path / "run", "key-sync", test_metrics)

    assert sync_run_folder(run_dir, store.uri, store.experiment_id)
    (run,) = _runs_with_key(client, store.experiment_id, "key-sync")
    assert _metric_histories(client, run.info.run_id) == EXPECTED
    assert _history(client, run.info.run_id, "test/dice/WT") == [(0, 0.8)]
    assert run.info.status == "FINISHED"
    assert run.data.tags[LOGGED_EPOCHS_TAG] == "3"
    assert run.data.tags["kdseg.method"] == "kd"
    assert run.data.params["method.temperature"] == "4"

    assert sync_run_folder(run_dir, store.uri, store.experiment_id)  # nothing new
    assert len(_runs_with_key(client, store.experiment_id, "key-sync")) == 1
    assert _metric_histories(client, run.info.run_id) == EXPECTED
    assert _history(client, run.info.run_id, "test/dice/WT") == [(0, 0.8)]

    # Re-evaluation with a changed result is mirrored once more.
    (run_dir / "test_metrics.json").write_text(json.dumps({"test/dice/WT": 0.9}))
    assert sync_run_folder(run_dir, store.uri, store.experiment_id)
    test_history = client.get_metric_history(run.info.run_id, "test/dice/WT")
    assert sorted((m.step, m.value) for m in test_history) == [(0, 0.8), (0, 0.9)]
    assert client.get_run(run.info.run_id).data.tags[TEST_METRICS_SHA_TAG] == (
        read_run_folder(run_dir).test_metrics_sha
    )


def test_sync_after_partial_live_logging_adds_only_later_epochs(
    store: Store, client, tmp_path
) -> None:
    run_dir = _write_run_folder(tmp_path / "run", "key-live", test_metrics=None)
    live = RunTracker.open(store.uri, store.experiment_id, "key-live", "kd", {}, {})
    # Epoch 0 the atomic way, epoch 1 the two-call way: both must be honoured.
    live.log_metrics({"train/loss": 1.0, "val/dice/WT": 0.25}, 0, tags=epoch_metrics_logged_tag(0))
    live.log_metrics({"train/loss": 0.8}, step=1)
    live.set_tags(epoch_metrics_logged_tag(1))
    # The job then lost tracking; the folder holds all 4 epochs.
    assert sync_run_folder(run_dir, store.uri, store.experiment_id)
    assert _metric_histories(client, live.run_id) == EXPECTED
    assert client.get_run(live.run_id).info.status == "FINISHED"


def test_sync_unreachable_returns_false(tmp_path, caplog) -> None:
    run_dir = _write_run_folder(tmp_path, "k", None)
    with caplog.at_level(logging.WARNING, logger="kdseg.tracking"):
        assert not sync_run_folder(run_dir, UNREACHABLE, "1", retry_budget_s=SHORT_BUDGET_S)
    assert len(_kdseg_warnings(caplog)) == 1


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("run.json", "{not json", "not valid JSON"),
        ("run.json", "[1, 2]", "JSON object"),
        ("run.json", '{"run_name": "n"}', "'run_key'"),
        ("run.json", '{"run_key": "k", "run_name": "n", "tags": {"a": 1}}', "'tags'"),
        ("history.csv", "step,loss\n0,1\n", "no 'epoch' column"),
        ("history.csv", "epoch,loss\n0,1\n0,2\n", "duplicate epochs"),
        ("history.csv", "epoch,loss\n0.5,1\n", "non-negative integers"),
        ("history.csv", "epoch,loss\n0,abc\n", "'loss' is not numeric"),
        ("history.csv", "", "not a readable CSV"),
        ("test_metrics.json", '{"test/dice/WT": "high"}', "not numbers"),
    ],
)
def test_malformed_run_folder_names_the_file(tmp_path, file: str, content: str, message) -> None:
    run_dir = _write_run_folder(tmp_path, "k", {"test/dice/WT": 0.5})
    (run_dir / file).write_text(content)
    with pytest.raises(RunFolderError, match=message) as info:
        sync_run_folder(run_dir, UNREACHABLE, "1", retry_budget_s=0)
    assert str(run_dir / file) in str(info.value)


def test_missing_history_names_the_file(tmp_path) -> None:
    run_dir = _write_run_folder(tmp_path, "k", None)
    (run_dir / "history.csv").unlink()
    with pytest.raises(RunFolderError, match=r"history\.csv: file not found"):
        read_run_folder(run_dir)


# ------------------------------------------------------------------------------------------
# mark_stale_runs
# ------------------------------------------------------------------------------------------


def test_mark_stale_runs(store: Store, client, tmp_path) -> None:
    experiment_id = init_tracking(store.uri, "stale-exp", tmp_path)
    run_ids = {
        key: RunTracker.open(store.uri, experiment_id, key, key, {}, {}).run_id
        for key in ("a", "b", "c")
    }
    foreign = client.create_run(experiment_id).info.run_id  # not a kdseg run

    assert mark_stale_runs(store.uri, experiment_id, ["a", "zzz"]) == 2
    assert mark_stale_runs(store.uri, experiment_id, {"a", "zzz"}) == 2  # idempotent
    flags = {key: client.get_run(rid).data.tags.get(CURRENT_TAG) for key, rid in run_ids.items()}
    assert flags == {"a": "true", "b": "false", "c": "false"}
    assert CURRENT_TAG not in client.get_run(foreign).data.tags

    assert mark_stale_runs(store.uri, experiment_id, ["a", "b", "c"]) == 0
    assert client.get_run(run_ids["b"]).data.tags[CURRENT_TAG] == "true"
    with pytest.raises(TypeError):
        mark_stale_runs(store.uri, experiment_id, "a")


def test_mark_stale_runs_leaves_other_datasets_alone(store: Store, client, tmp_path) -> None:
    experiment_id = init_tracking(store.uri, "stale-prefix-exp", tmp_path)
    ids = {key: RunTracker.open(store.uri, experiment_id, key, key, {}, {}).run_id
           for key in ("dsA/run1", "dsA/run2", "dsB/run1")}
    assert mark_stale_runs(store.uri, experiment_id, ["dsA/run1"], key_prefix="dsA/") == 1
    flags = {key: client.get_run(rid).data.tags.get(CURRENT_TAG) for key, rid in ids.items()}
    assert flags == {"dsA/run1": "true", "dsA/run2": "false", "dsB/run1": None}


def test_mark_stale_runs_unreachable_never_raises(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="kdseg.tracking"):
        assert mark_stale_runs(UNREACHABLE, "1", ["a"], retry_budget_s=SHORT_BUDGET_S) == 0
    assert len(_kdseg_warnings(caplog)) == 1


# ------------------------------------------------------------------------------------------
# Concurrency smoke test
# ------------------------------------------------------------------------------------------

N_PROCESSES = 4
N_STEPS = 50
CHILD_TIMEOUT_S = 180

# The child body is a script run with runpy: pytest imports this file with
# --import-mode=importlib, so a function defined here could not be unpickled in a child process.
CHILD_SCRIPT = """
from kdseg.tracking import RunTracker

tracker = RunTracker.open(URI, EXPERIMENT_ID, RUN_KEY, RUN_KEY, {}, {"worker": RUN_KEY})
for step in range(N_STEPS):
    tracker.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
tracker.finish()
if not tracker.ok:
    raise SystemExit(f"tracking failed in child {RUN_KEY}")
"""


def test_parallel_processes_lose_no_metric(store: Store, client, tmp_path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD_SCRIPT)
    keys = [f"key-parallel-{i}" for i in range(N_PROCESSES)]
    # forkserver, not fork: every child starts from a clean server process that holds no DB
    # connection (like separate Snakemake jobs), yet mlflow is imported once (preload) instead of
    # once per child as with spawn (~20 s of imports on 2 cores).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["mlflow.tracking", "mlflow.store.tracking.sqlalchemy_store"])
    children = [
        context.Process(
            target=runpy.run_path,
            args=(str(script),),
            kwargs={
                "init_globals": {
                    "URI": store.uri,
                    "EXPERIMENT_ID": store.experiment_id,
                    "RUN_KEY": key,
                    "N_STEPS": N_STEPS,
                }
            },
        )
        for key in keys
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(CHILD_TIMEOUT_S)
        if child.is_alive():
            child.kill()
    assert [child.exitcode for child in children] == [0] * N_PROCESSES
    for key in keys:
        (run,) = _runs_with_key(client, store.experiment_id, key)
        steps = [step for step, _ in _history(client, run.info.run_id, "train/loss")]
        assert steps == list(range(N_STEPS))


def test_server_managed_artifacts_only_with_a_server(tmp_path: Path) -> None:
    """artifact_root=None leaves artifacts to an MLflow server; with SQLite it is refused."""
    from kdseg.tracking.experiment import TrackingError, init_tracking

    with pytest.raises(TrackingError, match="only be null with an MLflow server"):
        init_tracking(f"sqlite:///{tmp_path}/m.db", "kdseg", None)
    assert not (tmp_path / "m.db").exists()
