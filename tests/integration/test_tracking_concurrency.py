"""Many processes logging at once through kdseg's tracking code: nothing fails, nothing is lost.

8 worker processes each open their own run with :meth:`kdseg.tracking.RunTracker.open` (run
found or created by its run key, in an experiment created once beforehand by
:func:`kdseg.tracking.init_tracking`, as the workflow's ``init_tracking`` rule does) and log 200
steps of 4 metrics, one ``log_batch`` request per step, as the trainer does per epoch. First
against a fresh SQLite file, then against an MLflow server backed by PostgreSQL. Every metric
history is then read back and counted.

The workers are plain subprocesses running this file as a script: they import MLflow, open
their run, print ``ready`` and wait for ``go`` on stdin, so the measured time is logging only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

PROCESSES = 8
STEPS = 200
METRICS = ("loss", "dice/WT", "dice/TC", "dice/ET")
EXPERIMENT = "kdseg-concurrency"


def _value(process: int, step: int, metric: int) -> float:
    """The value worker ``process`` logs for metric number ``metric`` at ``step`` (exact in
    binary floating point, so the read-back comparison can be exact)."""
    return process * 1000.0 + step + metric / 8


def _run_key(backend: str, process: int) -> str:
    return f"concurrency/{backend}/p{process}"


def _worker(uri: str, experiment_id: str, backend: str, process: int, steps: int) -> None:
    """One worker: open the run, wait for 'go', log ``steps`` steps, finish; print JSON."""
    import logging

    from kdseg.tracking import RunTracker

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    tracker = RunTracker.open(uri, experiment_id, _run_key(backend, process),
                              f"concurrency p{process}", {"kdseg.stage": "concurrency-test"},
                              {"process": process, "steps": steps})
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("no go")
    started = time.perf_counter()
    for step in range(steps):
        tracker.log_metrics({name: _value(process, step, k) for k, name in enumerate(METRICS)},
                            step=step)
    tracker.finish("FINISHED")
    print(json.dumps({"process": process, "ok": tracker.ok, "run_id": tracker.run_id,
                      "seconds": time.perf_counter() - started}), flush=True)


def _hammer(uri: str, backend: str, experiment_id: str) -> dict[str, float]:
    """Run the workers against ``uri``; check every value arrived; return the numbers."""
    procs = [subprocess.Popen(
        [sys.executable, __file__, uri, experiment_id, backend, str(i), str(STEPS)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[2]) for i in range(PROCESSES)]
    try:
        not_ready = []
        for i, proc in enumerate(procs):  # all imported MLflow and opened their run
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                not_ready.append(i)
        started = time.perf_counter()
        for proc in procs:
            if proc.poll() is None:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
        outputs = [proc.communicate(timeout=300) for proc in procs]
        seconds = time.perf_counter() - started
    finally:
        for proc in procs:  # only on an error above: end our own workers
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    results, failed = {}, []
    for i, (proc, (out, err)) in enumerate(zip(procs, outputs, strict=True)):
        lines = out.strip().splitlines()
        result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
        if proc.returncode != 0 or i in not_ready or result is None or not result["ok"] \
                or "WARNING:kdseg.tracking" in err:
            failed.append(f"process {i}: exit {proc.returncode}, result {result}, "
                          f"stderr: {err[-1500:]}")
        if result is not None:
            results[i] = result
    assert not failed, f"{len(failed)}/{PROCESSES} processes failed ({backend}):\n" + \
        "\n".join(failed)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = [e for e in client.search_experiments() if e.name == EXPERIMENT]
    assert [e.experiment_id for e in experiments] == [experiment_id]
    runs = client.search_runs([experiment_id], f"tags.`kdseg.stage` = 'concurrency-test' and "
                              f"tags.`kdseg.run_key` LIKE 'concurrency/{backend}/%'")
    assert len(runs) == PROCESSES, [r.data.tags["kdseg.run_key"] for r in runs]
    logged, lost, duplicated = 0, 0, 0
    for i, result in results.items():
        run = client.get_run(result["run_id"])
        assert run.data.tags["kdseg.run_key"] == _run_key(backend, i)
        assert run.info.status == "FINISHED"
        assert run.data.params == {"process": str(i), "steps": str(STEPS)}
        for k, name in enumerate(METRICS):
            history = client.get_metric_history(result["run_id"], name)
            logged += len(history)
            got = {(m.step, m.value) for m in history}
            want = {(step, _value(i, step, k)) for step in range(STEPS)}
            lost += len(want - got)
            duplicated += len(history) - len(got)
            assert got <= want, f"{name} of process {i}: unexpected values {sorted(got - want)[:5]}"
    expected = PROCESSES * STEPS * len(METRICS)
    assert (lost, duplicated, logged) == (0, 0, expected)
    return {"processes": PROCESSES, "steps": STEPS, "metrics_per_step": len(METRICS),
            "requests": PROCESSES * STEPS, "values": logged, "lost": lost, "seconds": seconds,
            "values_per_s": logged / seconds, "requests_per_s": PROCESSES * STEPS / seconds,
            "slowest_process_s": max(r["seconds"] for r in results.values())}


def _report(capsys: pytest.CaptureFixture[str], record_property, backend: str,
            numbers: dict[str, float]) -> None:
    record_property(f"concurrency_{backend}", numbers)
    with capsys.disabled():
        print(f"\n[tracking concurrency, {backend}] {numbers['processes']} processes x "
              f"{numbers['steps']} steps x {numbers['metrics_per_step']} metrics = "
              f"{numbers['values']} values ({numbers['lost']} lost) in {numbers['seconds']:.1f} s:"
              f" {numbers['values_per_s']:.0f} values/s, {numbers['requests_per_s']:.0f} "
              f"log_batch requests/s (slowest process {numbers['slowest_process_s']:.1f} s)")


def test_parallel_logging_to_sqlite_loses_nothing(tmp_path: Path, capsys, record_property) -> None:
    from kdseg.tracking import init_tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment_id = init_tracking(uri, EXPERIMENT, tmp_path / "artifacts")  # once, beforehand
    _report(capsys, record_property, "sqlite", _hammer(uri, "sqlite", experiment_id))


def test_parallel_logging_to_postgres_backed_server_loses_nothing(
        tmp_path: Path, capsys, record_property) -> None:
    from kdseg.tracking import init_tracking

    # imported here, not at the top: the workers run this file as a script, without tests/
    from tests.integration.mlflow_server import mlflow_server, postgres

    with postgres() as dsn, mlflow_server(dsn, tmp_path / "mlartifacts") as url:
        experiment_id = init_tracking(url, EXPERIMENT, tmp_path / "artifacts")
        numbers = _hammer(url, "server", experiment_id)
    _report(capsys, record_property, "postgres-server", numbers)


if __name__ == "__main__":  # a worker process (see _hammer)
    _uri, _experiment_id, _backend, _process, _steps = sys.argv[1:]
    _worker(_uri, _experiment_id, _backend, int(_process), int(_steps))
