"""Config checks and run-config resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kdseg import config as kdcfg
from kdseg.distill.options import LogitKDOptions, OptionsError, parse_method

REPO = Path(__file__).resolve().parents[1]


def test_default_config_is_valid(config: dict) -> None:
    kdcfg.check_config(config)
    assert kdcfg.student_subsets(config) == ["t1", "t1ce", "t2", "flair", "flair+t1ce"]
    methods = kdcfg.resolved_methods(config)
    # the default benchmark runs every registered method kind (issue 6)
    assert {m["kind"] for m in methods.values()} == set(kdcfg.METHOD_OPTIONS)


@pytest.mark.parametrize("method, teacher", [("baseline", None), ("logit_kd", "teacher"),
                                             ("kdnet", "teacher"), ("pmkl", "teacher"),
                                             ("ummkd", None), ("barlow_kd", None)])
def test_only_two_stage_students_point_at_a_teacher_run(config: dict, method: str,
                                                        teacher: str | None) -> None:
    run = kdcfg.student_run_config(config, "flair+t1ce", method, 0, 0)
    assert (run["teacher_dir"] is not None) == (teacher is not None)
    assert run["method"]["kind"] == method


def test_all_subsets_order_and_count() -> None:
    subsets = kdcfg.all_subsets(["t1", "t1ce", "t2", "flair"])
    assert len(subsets) == 15
    assert subsets[:4] == ["t1", "t1ce", "t2", "flair"]
    assert [s.count("+") for s in subsets] == [0] * 4 + [1] * 6 + [2] * 4 + [3]
    assert subsets[-1] == "flair+t1+t1ce+t2"


def test_subsets_accept_lists_and_plus_strings(config: dict) -> None:
    config["students"]["subsets"] = [["t1ce", "flair"], "t2+t1"]
    assert kdcfg.student_subsets(config) == ["flair+t1ce", "t1+t2"]


@pytest.mark.parametrize("subsets, message", [
    (["t3"], "students.subsets[0]: unknown modality ['t3']"),
    (["t1+t1"], "repeated modality"),
    (["t1", ["t1"]], "duplicate subsets"),
])
def test_bad_subsets_name_the_key(config: dict, subsets: list, message: str) -> None:
    config["students"]["subsets"] = subsets
    with pytest.raises(kdcfg.ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        kdcfg.check_config(config)


def test_unknown_method_name(config: dict) -> None:
    config["students"]["methods"] = ["baseline", "kd_net"]
    with pytest.raises(kdcfg.ConfigError, match=r"students.methods\[1\]: method 'kd_net'"):
        kdcfg.check_config(config)


def test_unknown_method_option_is_named(config: dict) -> None:
    config["methods"]["logit_kd"]["temprature"] = 2
    expected = r"methods\.logit_kd: unknown option\(s\) \['temprature'\]"
    with pytest.raises(kdcfg.ConfigError, match=expected):
        kdcfg.check_config(config)


def test_method_option_type_and_range() -> None:
    with pytest.raises(OptionsError, match=r"methods\.x\.temperature must be of type float"):
        parse_method("x", {"kind": "logit_kd", "temperature": "hot"})
    with pytest.raises(OptionsError, match=r"methods\.x\.temperature must be > 0"):
        parse_method("x", {"kind": "logit_kd", "temperature": 0})
    with pytest.raises(OptionsError, match="unknown method kind 'kdnet2'"):
        parse_method("x", {"kind": "kdnet2"})
    kind, opts = parse_method("logit_kd", {"temperature": 2})  # kind defaults to the name; int ok
    assert kind == "logit_kd" and opts == LogitKDOptions(temperature=2.0)


def test_schema_rejects_unknown_top_level_key(default_config: dict) -> None:
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    bad = {**default_config, "trian": {}}
    with pytest.raises(WorkflowError, match="trian"):
        validate(bad, str(Path(__file__).parents[1] / "workflow/schemas/config.schema.yaml"))


def test_run_configs_resolve_and_round_trip(config: dict, tmp_path: Path) -> None:
    teacher = kdcfg.teacher_run_config(config, 0, 0)
    student = kdcfg.student_run_config(config, "flair", "logit_kd", 0, 0)
    baseline = kdcfg.student_run_config(config, "flair", "baseline", 0, 0)
    assert teacher["input_modalities"] == ["flair", "t1", "t1ce", "t2"]
    assert student["teacher_dir"] == "results/synthetic/runs/teacher/fold0/seed0"
    assert baseline["teacher_dir"] is None
    assert student["method"] == {"name": "logit_kd", "kind": "logit_kd", "temperature": 2.0,
                                 "weight": 0.5}
    path = tmp_path / "run_config.yaml"
    kdcfg.write_run_config(student, path)
    cfg = kdcfg.load_run_config(path)
    assert cfg.to_dict() == student
    assert cfg.input_channels == [3]


def test_changing_one_method_changes_only_its_run_configs(config: dict) -> None:
    before = {m: kdcfg.student_run_config(config, "t1", m, 0, 0) for m in ("baseline", "logit_kd")}
    config["methods"]["logit_kd"]["temperature"] = 3.0
    after = {m: kdcfg.student_run_config(config, "t1", m, 0, 0) for m in ("baseline", "logit_kd")}
    assert before["baseline"] == after["baseline"]
    assert before["logit_kd"] != after["logit_kd"]


def test_run_key_is_deterministic_and_config_sensitive(config: dict, tmp_path: Path) -> None:
    a = kdcfg.parse_run_config(kdcfg.student_run_config(config, "t1", "logit_kd", 0, 0))
    b = kdcfg.parse_run_config(kdcfg.student_run_config(config, "t1", "logit_kd", 0, 0))
    assert kdcfg.run_key(a) == kdcfg.run_key(b)
    assert kdcfg.run_key(a).startswith("synthetic/student/t1/logit_kd/fold0/seed0/")
    config["train"]["lr"] = 0.1
    c = kdcfg.parse_run_config(kdcfg.student_run_config(config, "t1", "logit_kd", 0, 0))
    assert kdcfg.run_key(a) != kdcfg.run_key(c)


def test_run_config_unknown_key_names_file(tmp_path: Path) -> None:
    path = tmp_path / "run_config.yaml"
    path.write_text("stage: teacher\nbogus: 1\n")
    expected = r"run_config\.yaml: run_config: unknown key\(s\) \['bogus'\]"
    with pytest.raises(kdcfg.ConfigError, match=expected):
        kdcfg.load_run_config(path)


def test_nested_type_error_names_key(config: dict) -> None:
    config["train"]["batch_size"] = 2.5
    with pytest.raises(kdcfg.ConfigError, match=r"train\.batch_size must be int"):
        kdcfg.check_config(config)


def test_patch_not_divisible_by_network_depth_is_refused(config: dict) -> None:
    config["model"]["filters"] = [4, 8, 16, 32]  # three halvings -> multiples of 8
    config["train"]["patch_size"] = [32, 32, 36]
    expected = r"train\.patch_size \[32, 32, 36\] must be divisible by 8"
    with pytest.raises(kdcfg.ConfigError, match=expected):
        kdcfg.check_config(config)


def test_unpaired_data_refuses_teacher_methods_and_multi_modality_subsets(config: dict) -> None:
    config["dataset"].update(source="manifest", manifest="m.csv", unpaired=True,
                             modalities=["ct", "mr"])
    config["methods"]["ummkd_u"] = {"kind": "ummkd", "unpaired": True}
    config["students"] = {"subsets": ["ct", "mr"], "methods": ["baseline", "ummkd_u"]}
    kdcfg.check_config(config)
    assert not kdcfg.has_teacher(config)
    config["students"]["subsets"] = ["ct+mr"]
    with pytest.raises(kdcfg.ConfigError, match=r"'ct\+mr' needs cases carrying several"):
        kdcfg.check_config(config)
    config["students"] = {"subsets": ["ct"], "methods": ["ummkd"]}
    with pytest.raises(kdcfg.ConfigError, match="set unpaired: true"):
        kdcfg.check_config(config)


@pytest.mark.parametrize("dataset, message", [
    ({"source": "msd", "root": None}, "dataset.root is required"),
    ({"source": "manifest"}, "dataset.manifest"),
    ({"source": "brats", "root": "x", "unpaired": True}, "only a manifest"),
    ({"source": "brats", "root": "x", "labels": {"name": "m", "classes": {"a": 1, "b": 2}}},
     "must be stored as 0"),
])
def test_dataset_checks_name_the_key(config: dict, dataset: dict, message: str) -> None:
    config["dataset"].update(dataset)
    with pytest.raises(kdcfg.ConfigError, match=message):
        kdcfg.check_config(config)


@pytest.mark.parametrize("preset", ["brats2018", "brats2021", "msd_task01"])
def test_presets_train_their_teacher_with_their_own_recipe(preset: str) -> None:
    """Layered over config/config.yaml as Snakemake does (a recursive update), a preset's
    teacher must not inherit the default's 80-iteration teacher override."""
    from snakemake.utils import update_config

    from kdseg.config import teacher_run_config

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    update_config(config, yaml.safe_load((REPO / f"config/{preset}.yaml").read_text()))
    config["dataset"]["root"] = "/data"
    teacher = teacher_run_config(config, 0, 0)["train"]
    assert teacher["iterations_per_epoch"] == config["train"]["iterations_per_epoch"]
    assert teacher["epochs"] == config["train"]["epochs"]
