"""Training-cost table: golden seconds per step and ratios from hand-written run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kdseg.report.cost import collect_costs, cost_markdown


def _run(root: Path, stage: str, method: str, kind: str, train_s: float,
         iterations: int = 10) -> Path:
    run = root / f"{stage}-{method}"
    run.mkdir()
    cfg = {"stage": stage, "subset": "t1" if stage == "student" else "all",
           "method": {"name": method, "kind": kind}, "fold": 0, "seed": 0,
           "train": {"epochs": 2, "iterations_per_epoch": iterations}}
    (run / "run_config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "run.json").write_text(json.dumps({"train_time_s": train_s + 2.0,
                                              "steps_time_s": train_s, "peak_rss_mb": 500.0,
                                              "device": "cpu"}))
    return run


def test_cost_per_step_and_ratio_to_baseline(tmp_path: Path) -> None:
    runs = [_run(tmp_path, "teacher", "teacher", "baseline", 40.0, iterations=20),
            _run(tmp_path, "student", "baseline", "baseline", 10.0),
            _run(tmp_path, "student", "logit_kd", "logit_kd", 12.5),
            _run(tmp_path, "student", "ummkd", "ummkd", 21.0)]
    costs = collect_costs(runs)
    assert costs["steps"].tolist() == [40, 20, 20, 20]
    assert costs["s_per_step"].tolist() == pytest.approx([1.0, 0.5, 0.625, 1.05])
    assert costs["teacher"].tolist() == ["-", "none", "frozen", "joint"]
    md = cost_markdown(costs)
    # train s includes validation (+2 s here); s/step and the ratio use the steps' time only
    assert "| logit_kd | frozen teacher run (shared) | 1 | 20 | 14 | 0.625 | 1.25 | 500 | – |" in md
    assert ("| ummkd | teacher path trained in the job | 1 | 20 | 23 | 1.050 | 2.10 | 500 | – |"
            in md)
    assert "| teacher (all modalities) | — | 1 | 40 | 42 | 1.000 | 2.00 | 500 | – |" in md
    assert "(device: cpu)" in md


def test_cost_without_baseline_or_runs(tmp_path: Path) -> None:
    md = cost_markdown(collect_costs([_run(tmp_path, "student", "ummkd", "ummkd", 21.0)]))
    assert "| 1.050 | – |" in md
    with pytest.raises(ValueError, match="no runs"):
        collect_costs([])


def test_cost_reads_the_snakemake_benchmark_file(tmp_path: Path) -> None:
    runs = tmp_path / "results/ds/runs/student/t1"
    runs.mkdir(parents=True)
    run = _run(runs, "student", "baseline", "baseline", 10.0)
    # the workflow layout: runs/<kind...>/fold0/seed0 -> benchmarks/<kind...>/fold0_seed0.train.tsv
    layout = runs / "baseline/fold0/seed0"
    layout.parent.mkdir(parents=True)
    run.rename(layout)
    bench = tmp_path / "results/ds/benchmarks/student/t1/baseline/fold0_seed0.train.tsv"
    bench.parent.mkdir(parents=True)
    bench.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load"
                     "\tcpu_time\n17.25\t0:00:17\t812.5\t1\t1\t1\t0\t0\t90\t15\n")
    costs = collect_costs([layout])
    assert costs.loc[0, "job_wall_s"] == 17.25 and costs.loc[0, "job_max_rss_mb"] == 812.5
    assert "| 0.500 | 1.00 | 500 | 17 |" in cost_markdown(costs)
