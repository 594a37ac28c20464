"""``kdseg bench``: the CLI, the output files and the train_step section (quick mode; the
numbers are not checked, only that every figure is there and consistent)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from kdseg.bench.common import BenchOptions, Row, format_table, speedup_row, time_ratio_row
from kdseg.bench.runner import SECTIONS
from kdseg.cli import BENCH_SECTIONS, main

REPO = Path(__file__).resolve().parents[2]


def test_cli_lists_the_runners_sections() -> None:
    assert BENCH_SECTIONS == SECTIONS


def test_ratio_rows_read_the_way_their_goal_is_written() -> None:
    slow = time_ratio_row("s", "x", 1.3, "s/step", "ref", 1.0, 1.25)
    assert slow.ratio == pytest.approx(1.3) and slow.goal == "≤ 1.25×" and slow.met is False
    fast = speedup_row("s", "x", 0.1, "s/case", "ref", 1.0, 5)
    assert fast.ratio == pytest.approx(10.0) and fast.goal == "≥ 5×" and fast.met is True
    context = time_ratio_row("s", "x", 2.0, "s", "ref", 1.0)
    assert context.met is None and context.goal == ""
    table = format_table([slow, fast, Row("s", "nan", math.nan, "s")])
    assert "**no**" in table and "| yes |" in table and "— s" in table


def test_unknown_section_is_refused(tmp_path: Path) -> None:
    assert main(["bench", "warp_drive", "--out", str(tmp_path)]) == 2


def test_train_step_section_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = main(["bench", "train_step", "--quick", "--out", str(out), "--threads", "1",
                 "--config", str(REPO / "config/config.yaml"), "--workdir", str(tmp_path / "w")])
    assert code == 0
    rows = pd.read_csv(out / "bench.csv")
    methods = ["baseline", "logit_kd", "kdnet", "pmkl", "ummkd", "barlow_kd"]
    assert [f"{m} step" for m in methods] == rows["item"].tolist()[:6]
    goals = dict(zip(rows["item"], rows["goal"].fillna(""), strict=True))
    assert {m for m in methods if goals[f"{m} step"]} == {"logit_kd", "kdnet", "pmkl"}
    assert (rows["value"][:6] > 0).all() and (rows["reference"][:6] == "plain MONAI step").all()
    assert rows["item"].iloc[-1].startswith("GPU steps") and "not measured" in rows["note"].iloc[-1]
    details = pd.read_csv(out / "train_step.csv")
    assert set(details["variant"]) == {"monai_plain", *methods}
    doc = json.loads((out / "bench.json").read_text())
    assert {"cpu", "cpus_usable", "memory_gib", "git_sha", "versions", "torch_threads"} <= set(
        doc["machine"])
    assert doc["machine"]["torch_threads"] == 1
    assert set(doc["sections"]["train_step"]["step_s"]) == {"monai_plain", *methods}
    assert (out / "bench.md").read_text().count("| train_step |") == 7


def test_gpu_rows_run_on_the_cpu(tmp_path: Path) -> None:
    """The CUDA-only figures' code path (teacher, student, KD student at the GPU patch, both
    memory formats), on the CPU with a tiny patch."""
    from kdseg.bench.train_step import gpu_rows

    opts = BenchOptions(out=tmp_path, config=REPO / "config/config.yaml", quick=True,
                        gpu_patch=16, workdir=tmp_path)
    rows, details, meta = gpu_rows(opts, tmp_path)
    assert len(details) == 8 and set(details["memory_format"]) == {"channels_last",
                                                                   "contiguous"}
    assert set(details["network"]) == {"teacher", "baseline", "kdnet", "monai_plain"}
    assert meta["best_memory_format"] in {"channels_last", "contiguous"}
    assert meta["gpu_step_s"] > 0 and meta["gpu_kd_ratio"] > 0
    goals = {r.item: (r.reference, r.goal) for r in rows}
    assert goals["kdnet step at 16^3"] == ("plain MONAI step", "≤ 1.15×")
    assert goals["KD overhead at 16^3 (kdnet)"] == ("kdseg baseline step", "")


def test_compile_option_adds_compiled_variants(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``kdseg bench --compile`` times train.compile students next to the eager ones (the
    ``aot_eager`` backend here: the inductor's C++ compilation takes minutes on this CPU)."""
    import torch

    from kdseg.bench.train_step import run

    real = torch.compile
    monkeypatch.setattr(torch, "compile",
                        lambda model, **kw: real(model, backend="aot_eager", **kw))
    torch._dynamo.reset()
    res = run(BenchOptions(out=tmp_path, config=REPO / "config/config.yaml", quick=True,
                           compile=True, workdir=tmp_path / "w"), {})
    assert {"baseline+compile", "kdnet+compile"} <= set(res.meta["step_s"])
    goals = {r.item: r.goal for r in res.rows}
    assert goals["kdnet+compile step"] == "≤ 1.25×" and goals["baseline+compile step"] == ""
