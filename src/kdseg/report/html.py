"""The ``report`` stage: figures and one self-contained HTML page (images embedded).

``results/<dataset>/report/index.html`` opens from disk, mailed or archived, with nothing else
beside it: figures are embedded as base64 PNG (the PDFs for papers sit in ``figures/``), tables
are HTML rendered from the same cells as the Markdown and LaTeX tables
(:mod:`kdseg.report.formats`). The page states the design (dataset fingerprint, config, code
version), the results, the statistical methods in words and the compute cost.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from kdseg.data.labels import get_convention
from kdseg.fileio import write_text_atomic
from kdseg.report import figures, formats
from kdseg.report.files import FIGURES
from kdseg.report.formats import number
from kdseg.report.overlays import overlay_rows
from kdseg.report.paper import subset_table
from kdseg.report.ranking import ALL_SUBSETS
from kdseg.report.stats import ALPHA, MIN_PAIRS_WILCOXON


@dataclass(frozen=True)
class ReportInputs:
    """Everything the report reads: the summary folder, run folders, the preprocessed dataset
    (fingerprint, and arrays for the overlays), the config."""

    summary_dir: Path
    runs: list[Path]
    preprocessed: Path
    config: dict[str, Any]
    overlay_cases: int = 3
    tables: dict[str, pd.DataFrame] = field(default_factory=dict, compare=False)
    infos: list[dict[str, Any]] = field(default_factory=list, compare=False)

    def run_infos(self) -> list[dict[str, Any]]:
        """Every run's ``run.json``, read once (the page and the MLflow summary run use them)."""
        if not self.infos:
            self.infos.extend(json.loads((Path(r) / "run.json").read_text()) for r in self.runs)
        return self.infos

    def table(self, name: str) -> pd.DataFrame:
        """``summary_dir/<name>.csv``, read once."""
        if name not in self.tables:
            path = self.summary_dir / f"{name}.csv"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing; run `kdseg summarize` first")
            try:
                # case ids stay strings ("00123" must not become 123)
                self.tables[name] = pd.read_csv(path, dtype={"case": str})
            except pd.errors.EmptyDataError:
                self.tables[name] = pd.DataFrame()
        return self.tables[name]


def make_figures(inputs: ReportInputs, out_dir: Path) -> dict[str, Path]:
    """Write every figure of :data:`FIGURES` as PNG + PDF; return name -> PNG path."""
    long, summary = inputs.table("metrics_long"), inputs.table("comparison")
    paired = inputs.table("paired_vs_baseline")
    convention = get_convention(inputs.config["dataset"]["labels"])
    rows, caption = overlay_rows(long, paired, inputs.runs, inputs.preprocessed, convention,
                                 inputs.config["dataset"]["modalities"], inputs.overlay_cases)
    made = {
        "paired_differences_dice": figures.paired_differences_figure(long, paired, "dice"),
        "paired_differences_hd95": figures.paired_differences_figure(long, paired, "hd95"),
        "heatmap_dice": figures.heatmap_figure(summary, "dice"),
        "ranking_stability": figures.ranking_stability_figure(
            inputs.table("ranking"), inputs.table("ranking_stability")),
        "overlays": figures.overlay_figure(rows, caption),
    }
    if set(made) != set(FIGURES):  # Snakemake declares FIGURES as the rule's outputs
        raise RuntimeError(f"kdseg.report.files.FIGURES {FIGURES} != figures made {list(made)}")
    return {name: figures.save(fig, out_dir / "figures" / name)[0] for name, fig in made.items()}


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{alt}">'


def _paired_cells(paired: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows subset · method, columns regions: ``Δ [CI] p`` (bold when significant)."""
    table = paired[paired["metric"] == metric]
    if table.empty:
        return pd.DataFrame()
    regions = list(dict.fromkeys(table["region"]))
    digits = 1 if metric == "hd95" else 3
    out = []
    for (subset, method), rows in table.groupby(["subset", "method"], sort=False):
        by_region = rows.set_index("region")
        row = {"subset": subset, "method": method}
        for region in regions:
            r = by_region.loc[region]
            p = "–" if pd.isna(r["p_holm"]) else f"{r['p_holm']:.2g}"
            text = (f"{r['median_diff']:+.{digits}f} [{r['ci_low']:+.{digits}f}, "
                    f"{r['ci_high']:+.{digits}f}] p={p}")
            row[region] = formats.bold(text) if bool(r["significant"]) else text
        out.append(row)
    return pd.DataFrame(out)


def _findings(inputs: ReportInputs) -> list[str]:
    """Plain-language sentences generated from the tables (no hand-written claims)."""
    summary, paired = inputs.table("comparison"), inputs.table("paired_vs_baseline")
    ranking = inputs.table("ranking")
    out = []
    teacher = summary[(summary["stage"] == "teacher") & (summary["metric"] == "dice")]
    if not teacher.empty:
        regions = ", ".join(f"{r.region} {r.mean:.3f}" for r in teacher.itertuples())
        out.append(f"The teacher (all modalities) reaches a mean Dice of {regions}.")
    if not paired.empty:
        dice = paired[paired["metric"] == "dice"]
        up = dice[dice["significant"] & (dice["median_diff"] > 0)]
        down = dice[dice["significant"] & (dice["median_diff"] < 0)]
        n_cases = int(dice["n"].max()) if len(dice) else 0
        out.append(f"{len(dice)} paired Dice comparisons against the baseline student "
                   f"(up to {n_cases} test cases each): {len(up)} significant improvements, "
                   f"{len(down)} significant degradations after Holm correction.")
        if n_cases and n_cases < MIN_PAIRS_WILCOXON:
            out.append(f"With n = {n_cases} paired cases no test is run (it needs at least "
                       f"{MIN_PAIRS_WILCOXON}); read the confidence intervals.")
        elif n_cases and n_cases < 10:
            out.append(f"With n = {n_cases} cases the smallest Wilcoxon p-value possible is "
                       f"{2 / 2 ** n_cases:.3g} before correction, so little can reach "
                       "significance at this size; read the confidence intervals.")
        best = dice.groupby(["subset", "method"], sort=False)["median_diff"].mean().dropna()
        if len(best):
            (subset, method), value = best.idxmax(), best.max()
            out.append(f"Largest median gain over the baseline (mean over regions): "
                       f"{method} on {subset} ({value:+.3f} Dice).")
    overall = ranking[ranking["subset"] == ALL_SUBSETS] if not ranking.empty else ranking
    if not overall.empty:
        top = overall.iloc[0]
        out.append(f"Over all subsets the ranking puts {top['method']} first (mean rank "
                   f"{top['score']:.2f}; first in {top['p_first']:.0%} of bootstrap samples).")
    return out


def _design(inputs: ReportInputs) -> dict[str, Any]:
    cfg = inputs.config
    fingerprint = json.loads((inputs.preprocessed / "dataset.json").read_text())
    infos = inputs.run_infos()
    first = infos[0]
    train = cfg.get("train", {})
    rows = [
        ("dataset", f"{cfg['dataset']['name']} (source: {cfg['dataset']['source']}), "
                    f"{fingerprint['n_cases']} cases, labels {fingerprint['label_convention']}"),
        ("modalities", ", ".join(fingerprint["modalities"])),
        ("median shape / spacing (mm)",
         f"{fingerprint['median_shape']} / {[round(v, 2) for v in fingerprint['median_spacing']]}"),
        ("teacher", "all modalities (" + ", ".join(dict.fromkeys(inputs.table("comparison")
                                                               .query("stage == 'teacher'")
                                                               ["subset"])) + ")"),
        ("student subsets", ", ".join(dict.fromkeys(inputs.table("comparison").query(
            "stage == 'student'")["subset"]))),
        ("methods", ", ".join(cfg["students"]["methods"])),
        ("splits", f"{cfg['splits']['folds']} fold(s)" + (
            f", test fraction {cfg['splits']['test_fraction']}"
            if cfg["splits"]["folds"] == 1 else " (cross-validation: each case predicted once)")),
        ("seeds", ", ".join(map(str, cfg["seeds"]))),
        ("training", f"patch {train.get('patch_size')}, batch {train.get('batch_size')}, "
                     f"{train.get('epochs')} × {train.get('iterations_per_epoch')} steps"),
        ("evaluation", f"empty rule {cfg['evaluation']['empty_rule']}, NSD tolerance "
                       f"{cfg['evaluation'].get('nsd_tolerance_mm', '–')} mm"),
        ("code", f"kdseg git {first.get('git_sha', 'unknown')}"),
        ("device", ", ".join(sorted({str(i.get('device', '')) for i in infos}))),
    ]
    return {"rows": rows, "versions": first.get("versions", {}),
            "config_yaml": yaml.safe_dump(cfg, sort_keys=False),
            "fingerprint_json": json.dumps(fingerprint, indent=1)}


def _cost_table(costs: pd.DataFrame) -> pd.DataFrame:
    grouped = costs.groupby(["stage", "method"], sort=False).agg(
        jobs=("train_s", "size"), train_s=("train_s", "mean"), s_per_step=("s_per_step", "mean"),
        job_wall_s=("job_wall_s", "mean"), total_h=("job_wall_s", "sum"),
        peak_rss_mb=("peak_rss_mb", "max"), job_max_rss_mb=("job_max_rss_mb", "max"))
    base = grouped["s_per_step"].get(("student", "baseline"), np.nan)
    rows = []
    for (stage, method), r in grouped.iterrows():
        rows.append({"model": "teacher" if stage == "teacher" else method, "jobs": str(int(r.jobs)),
                     "train s / job": number(r.train_s, 0), "s / step": number(r.s_per_step),
                     "× baseline": number(r.s_per_step / base, 2),
                     "job wall s (Snakemake)": number(r.job_wall_s, 0),
                     "total job h": number(r.total_h / 3600, 2),
                     "peak RSS MB (run.json / Snakemake)":
                         f"{number(r.peak_rss_mb, 0)} / {number(r.job_max_rss_mb, 0)}"})
    return pd.DataFrame(rows)


def write_report(inputs: ReportInputs, out_dir: Path) -> Path:
    """Write the figures and ``index.html`` into ``out_dir``; return the page's path."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    out_dir = Path(out_dir)
    pngs = make_figures(inputs, out_dir)
    summary, ranking = inputs.table("comparison"), inputs.table("ranking")
    modalities = inputs.config["dataset"]["modalities"]
    has_students = bool((summary["stage"] == "student").any())
    subset_html = ""
    if has_students:
        subset_html = formats.to_html(subset_table(summary, "dice", modalities)[1])
    ranking_cells = pd.DataFrame()
    if not ranking.empty:
        ranking_cells = pd.DataFrame({
            "subset": ranking["subset"], "rank": ranking["rank"].astype(str),
            "method": ranking["method"], "mean rank": ranking["score"].map(number),
            "P(rank 1)": ranking["p_first"].map(lambda v: f"{v:.0%}"),
            "95 % bootstrap rank": [f"{lo:.0f}–{hi:.0f}" for lo, hi in
                                    zip(ranking["rank_low"], ranking["rank_high"], strict=True)],
            "Kendall τ (median)": ranking["kendall_tau_median"].map(lambda v: number(v, 2))})
    vs_teacher = _paired_cells(inputs.table("paired_vs_teacher"), "dice")
    stats_cfg = inputs.config.get("statistics", {})
    env = Environment(loader=PackageLoader("kdseg.report", "templates"),
                      autoescape=select_autoescape(["html", "j2"]))
    page = env.get_template("report.html.j2").render(
        title=f"kdseg benchmark — {inputs.config['dataset']['name']}",
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        findings=_findings(inputs), design=_design(inputs),
        subset_table=subset_html,
        heatmap=_img(pngs["heatmap_dice"], "heat map"),
        delta_dice=formats.to_html(_paired_cells(inputs.table("paired_vs_baseline"), "dice")),
        delta_hd95=formats.to_html(_paired_cells(inputs.table("paired_vs_baseline"), "hd95")),
        paired_dice=_img(pngs["paired_differences_dice"], "paired differences Dice"),
        paired_hd95=_img(pngs["paired_differences_hd95"], "paired differences HD95"),
        vs_teacher=formats.to_html(vs_teacher) if not vs_teacher.empty else "",
        ranking=formats.to_html(ranking_cells) if not ranking_cells.empty else "",
        ranking_figure=_img(pngs["ranking_stability"], "ranking stability"),
        overlays=_img(pngs["overlays"], "overlays"),
        cost=formats.to_html(_cost_table(inputs.table("cost"))),
        family=stats_cfg.get("family", "subset_region"), n_boot=stats_cfg.get("n_boot", 2000),
        ranking_metrics=", ".join(stats_cfg.get("ranking_metrics", ["dice", "hd95"])),
        ranking_boot=stats_cfg.get("ranking_boot", 1000), alpha=ALPHA,
        min_pairs=MIN_PAIRS_WILCOXON,
        empty_rule=inputs.config["evaluation"]["empty_rule"],
        files=sorted(p.name for p in inputs.summary_dir.iterdir() if not p.name.startswith(".")),
    )
    index = out_dir / "index.html"
    write_text_atomic(page, index)
    return index
