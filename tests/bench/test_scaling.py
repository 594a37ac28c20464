"""The scaling model: unit counts of a design and the estimate, checked against hand counts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from kdseg.bench.common import BenchOptions, SectionResult
from kdseg.bench.scaling import Design, UnitCosts, estimate, run

REPO = Path(__file__).resolve().parents[2]


def _default_config() -> dict:
    from snakemake.utils import validate

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    validate(config, str(REPO / "workflow/schemas/config.schema.yaml"))
    return config


def test_estimate_matches_a_hand_count() -> None:
    design = Design(cases=10, test_cases_per_run=5, val_cases=1, folds=1, seeds=1, subsets=2,
                    methods=("baseline", "logit_kd"), student_steps=100, teacher_steps=200,
                    validations=2, patch_voxels=1000, case_voxels=2_000_000)
    costs = UnitCosts(step_s={"teacher": 0.5, "baseline": 0.4, "logit_kd": 0.6},
                      patch_voxels=1000, predict_s_per_mvox=3.0, evaluate_s_per_mvox=0.5,
                      preprocess_s_per_mvox=1.0,
                      job_start_s={"network": 3.0, "evaluate": 2.0, "light": 0.5})
    est = estimate(design, costs, parallel_jobs=2)
    # teacher 200 x 0.5; 2 subsets x (100 x 0.4 + 100 x 0.6)
    assert est["train_s"] == pytest.approx(100 + 80 + 120)
    # 5 runs x 2 validations x 1 case x (3 s/Mvox x 2 Mvox)
    assert est["validate_s"] == pytest.approx(60)
    assert est["predict_s"] == pytest.approx(5 * 5 * 6)
    assert est["evaluate_s"] == pytest.approx(5 * 5 * 1)
    assert est["preprocess_s"] == pytest.approx(10 * 2)
    # 5 runs: 10 train/predict jobs, 5 evaluations, 5 run configs + 6 workflow-wide jobs
    assert est["job_start_s"] == pytest.approx(10 * 3.0 + 5 * 2.0 + 11 * 0.5)
    assert design.jobs() == 4 + 4 * 5 + 2
    total = 300 + 60 + 150 + 25 + 20 + 45.5
    assert est["total_s"] == pytest.approx(total)
    assert est["wall_s"] == pytest.approx(20 + (total - 20) / 2)
    assert est["steps"] == 200 + 2 * 2 * 100
    # a step measured at another patch size scales with the voxel count
    bigger = estimate(Design(**{**design.__dict__, "patch_voxels": 2000}), costs)
    assert bigger["train_s"] == pytest.approx(600)


def test_default_config_design_counts_what_the_workflow_schedules() -> None:
    design = Design.from_config(_default_config(), case_voxels=1)
    assert design.cases == 48 and design.test_cases_per_run == 24
    assert design.val_cases == 1 and design.validations == 1  # max_val_cases 1, last epoch only
    assert design.teacher_runs == 1 and design.student_runs == 30
    assert design.jobs() + 1 == 131  # + the `all` target: the dry run's 131 jobs
    assert design.student_steps == 160 and design.teacher_steps == 640


def test_section_runs_on_other_sections_results(tmp_path: Path) -> None:
    previous = {
        "train_step": SectionResult([], None, {
            "step_s": {"monai_plain": 0.05, "baseline": 0.04, "logit_kd": 0.05, "kdnet": 0.05,
                       "pmkl": 0.055, "ummkd": 0.08, "barlow_kd": 0.08},
            "patch_size": [24, 24, 24]}),
        "inference": SectionResult([], None, {"shape": [240, 240, 155],
                                              "teacher": {"wall_median_s": {"kdseg": 6.0}}}),
        "evaluation": SectionResult([], None, {"shape": [240, 240, 155],
                                               "median_s": {"kdseg_evaluate_case": 0.1}}),
        "preprocess": SectionResult([], None, {"case_shape": [240, 240, 155],
                                               "s_per_case": 0.7}),
    }
    res = run(BenchOptions(out=tmp_path, config=REPO / "config/config.yaml", quick=True),
              previous)
    table = res.details.set_index("design")
    assert table.loc["this config", "runs"] == 31
    assert table.loc["15 subsets", "runs"] == 1 + 15 * 6
    assert table.loc["5 folds", "runs"] == 5 * 31
    # more cases: more predictions, evaluations and preprocessing, the same training
    assert table.loc["285 cases", "train_h"] == pytest.approx(table.loc["this config", "train_h"])
    assert table.loc["285 cases", "predict_h"] > table.loc["this config", "predict_h"]
    assert all(math.isfinite(v) for v in table["wall_h"])
    full = res.meta["full_brats"]
    assert full["steps"] == (5 + 15 * 6 * 5) * 250 * 250  # teachers + students, 62,500 each
    assert any("not measured" in r.note for r in res.rows)  # no GPU step time given
