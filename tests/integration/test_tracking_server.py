"""The tiny benchmark tracked by an MLflow server with a PostgreSQL backend, as on a cluster.

A throwaway PostgreSQL cluster and ``mlflow server`` are started; the tiny workflow runs with
``tracking.uri: http://127.0.0.1:<port>`` and ``--cores 2`` (jobs log in parallel). Then every
run folder must have exactly one MLflow run holding its params and every value of its
``history.csv`` and ``test_metrics.json``, plus one summary run, all in one experiment. A rerun
with ``--forcerun`` of a training and an evaluation job must find the same runs again by their
run keys instead of adding runs.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.integration.mlflow_server import mlflow_server, postgres
from tests.workflow.test_workflow import REPO, job_counts, snakemake

pytestmark = [pytest.mark.integration, pytest.mark.workflow]

EXPERIMENT = "kdseg"
RUN_KEY = "kdseg.run_key"
# Logged by the trainer from run.json (not history.csv) at step = number of epochs.
RUN_JSON_METRICS = {"time/train_s": "train_time_s", "memory/peak_rss_mb": "peak_rss_mb"}


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def expected_values(run_dir: Path) -> dict[str, dict[int, float]]:
    """{metric: {step: value}} that the run folder's files say MLflow must hold."""
    history = pd.read_csv(run_dir / "history.csv")
    expected: dict[str, dict[int, float]] = defaultdict(dict)
    for row in history.to_dict(orient="records"):
        for key, value in row.items():
            if key != "epoch" and _finite(value):
                expected[key][int(row["epoch"])] = float(value)
    for key, value in json.loads((run_dir / "test_metrics.json").read_text()).items():
        if _finite(value):
            expected[key][0] = float(value)
    info = json.loads((run_dir / "run.json").read_text())
    for key, field in RUN_JSON_METRICS.items():
        expected[key][len(history)] = float(info[field])
    return dict(expected)


def check_runs(client, experiment_id: str, runs_root: Path, *,
               allow_relogged: bool) -> tuple[dict[str, str], int]:
    """Every run folder has exactly one FINISHED run with its params, tags and all its values.

    Returns ({run key: run id}, number of metric values checked). With ``allow_relogged``, a
    step may hold older values next to the file's (a retrained run logs its epochs again).
    """
    folders = sorted(p.parent for p in runs_root.rglob("run.json"))
    assert len(folders) == 9, folders  # teacher + 2 subsets x 4 methods
    runs = client.search_runs([experiment_id], max_results=1000)
    by_key: dict[str, list] = defaultdict(list)
    for run in runs:
        by_key[run.data.tags.get(RUN_KEY, "<none>")].append(run)
    duplicates = {key: len(found) for key, found in by_key.items() if len(found) > 1}
    assert not duplicates, f"several MLflow runs per run key: {duplicates}"
    summary = [r for r in runs if r.data.tags.get("kdseg.stage") == "summary"]
    assert len(summary) == 1 and len(runs) == len(folders) + 1, \
        sorted(r.info.run_name for r in runs)
    checked, ids = 0, {}
    problems: list[str] = []
    for folder in folders:
        info = json.loads((folder / "run.json").read_text())
        found = by_key.get(info["run_key"], [])
        if len(found) != 1:
            problems.append(f"{folder}: {len(found)} MLflow runs for {info['run_key']}")
            continue
        run = found[0]
        ids[info["run_key"]] = run.info.run_id
        if run.info.status != "FINISHED":
            problems.append(f"{folder}: status {run.info.status}")
        if run.data.tags.get("kdseg.current") != "true":
            problems.append(f"{folder}: kdseg.current={run.data.tags.get('kdseg.current')}")
        params = {key: str(value)[:6000] for key, value in info["params"].items()}
        if run.data.params != params:
            diff = set(run.data.params.items()) ^ set(params.items())
            problems.append(f"{folder}: params differ: {sorted(diff)[:6]}")
        expected = expected_values(folder)
        if set(run.data.metrics) != set(expected):
            problems.append(f"{folder}: metric keys differ: "
                            f"{sorted(set(run.data.metrics) ^ set(expected))}")
        for key, steps in expected.items():
            history = client.get_metric_history(run.info.run_id, key)
            logged: dict[int, list[float]] = defaultdict(list)
            for metric in history:
                logged[metric.step].append(metric.value)
            for step, value in steps.items():
                checked += 1
                values = logged.get(step, [])
                if not any(math.isclose(v, value, rel_tol=1e-12, abs_tol=1e-12) for v in values):
                    problems.append(f"{folder}: {key} step {step}: file {value}, MLflow {values}")
                elif len(values) > 1 and not allow_relogged:
                    problems.append(f"{folder}: {key} step {step} logged {len(values)} times")
            if set(logged) - set(steps):
                problems.append(f"{folder}: {key} has steps {sorted(set(logged) - set(steps))} "
                                "that the files do not")
    assert not problems, "\n".join(problems[:40])

    run = summary[0]
    ids[run.data.tags[RUN_KEY]] = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.params["n_runs"] == str(len(folders))
    from kdseg.report.mlflow_summary import significance_counts

    paired = pd.read_csv(runs_root.parent / "summary/paired_vs_baseline.csv")
    assert run.data.metrics == pytest.approx(significance_counts(paired))
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == \
        {"tables", "figures", "report"}
    return ids, checked


def test_tiny_benchmark_against_postgres_backed_mlflow_server(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], record_property) -> None:
    from mlflow.tracking import MlflowClient

    workdir = tmp_path / "work"
    workdir.mkdir()
    with postgres() as dsn, mlflow_server(dsn, tmp_path / "server-artifacts") as url:
        config = yaml.safe_load(
            (REPO / "tests/workflow/tiny.yaml").read_text().replace("RESULTS_DIR", "results"))
        # artifact_root: null -> the server stores artifacts (--artifacts-destination) and jobs
        # upload them over HTTP: nothing has to be shared between nodes but the server.
        config["tracking"].update(uri=url, experiment=EXPERIMENT, artifact_root=None)
        cfg = workdir / "server.yaml"
        cfg.write_text(yaml.safe_dump(config))

        started = time.perf_counter()
        first = snakemake("--cores", "2", configs=(cfg,), cwd=workdir)
        first_s = time.perf_counter() - started
        first_jobs = job_counts(first.stdout + first.stderr)

        client = MlflowClient(url)
        experiments = [e for e in client.search_experiments() if e.name == EXPERIMENT]
        assert len(experiments) == 1
        experiment = experiments[0]
        assert experiment.artifact_location.startswith("mlflow-artifacts:"), experiment
        assert not (workdir / "results/mlartifacts").exists()
        assert client.search_runs(["0"]) == [], "runs misfiled into the Default experiment"
        tracking = json.loads((workdir / "results/tracking/experiment.json").read_text())
        assert tracking["uri"] == url and tracking["experiment_id"] == experiment.experiment_id
        runs_root = workdir / "results/tiny/runs"
        ids_before, checked = check_runs(client, experiment.experiment_id, runs_root,
                                         allow_relogged=False)

        # Rerun one training job (live logging reopens its run) and one evaluation job (the
        # sync reopens its run); summarize and report follow. No run may be added.
        retrain = "results/tiny/runs/student/t1/baseline/fold0/seed0/model.pt"
        reevaluate = "results/tiny/runs/student/flair/logit_kd/fold0/seed0/metrics_per_case.csv"
        started = time.perf_counter()
        rerun = snakemake("--cores", "2", "--forcerun", retrain, reevaluate, configs=(cfg,),
                          cwd=workdir)
        rerun_s = time.perf_counter() - started
        rerun_jobs = job_counts(rerun.stdout + rerun.stderr)
        assert rerun_jobs["train_student"] == 1 and rerun_jobs["evaluate"] == 2, rerun_jobs
        assert rerun_jobs["report"] == 1, rerun_jobs

        assert len([e for e in client.search_experiments() if e.name == EXPERIMENT]) == 1
        ids_after, _ = check_runs(client, experiment.experiment_id, runs_root,
                                  allow_relogged=True)
        summary_key = next(key for key in ids_after if "/summary/" in key)
        assert ids_after == ids_before, "a rerun created new MLflow runs instead of reusing them"
        assert client.search_runs(["0"]) == []
        # The UI's artifact view, served from the server's own artifact store.
        assert any((tmp_path / "server-artifacts").rglob("index.html"))
        artifact = f"{url}/get-artifact?path=report/index.html&run_uuid={ids_after[summary_key]}"
        with urllib.request.urlopen(artifact, timeout=30) as response:
            page = response.read()
        assert page == (workdir / "results/tiny/report/index.html").read_bytes()

    numbers = {"first_run_s": round(first_s, 1), "first_run_jobs": first_jobs["total"],
               "rerun_s": round(rerun_s, 1), "rerun_jobs": rerun_jobs["total"],
               "mlflow_runs": len(ids_after), "metric_values_checked": checked}
    record_property("tracking_server", numbers)
    with capsys.disabled():
        print(f"\n[tracking server, PostgreSQL] tiny benchmark --cores 2: "
              f"{numbers['first_run_jobs']} jobs in {first_s:.0f} s; "
              f"{numbers['mlflow_runs']} MLflow runs, "
              f"{checked} metric values checked against the run folders, none lost; rerun of "
              f"{numbers['rerun_jobs']} jobs (--forcerun) in {rerun_s:.0f} s, same run ids")
