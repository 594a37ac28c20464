"""``python -m kdseg <stage>``: one subcommand per pipeline stage (Snakemake rules call these).

Heavy modules (torch, MONAI, MLflow) are imported inside the handlers so that light commands
(``write-run-config``) start fast. Expected problems (bad data, bad config) print one clear
``kdseg <stage>: error: ...`` line and exit with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _tracking(path: str | None) -> dict[str, str] | None:
    """The tracking JSON written by ``init-tracking`` (absent/disabled -> None)."""
    if not path:
        return None
    info = json.loads(Path(path).read_text())
    return info if info.get("enabled", True) else None


def cmd_synthesize(a: argparse.Namespace) -> None:
    from kdseg.data.layouts import write_layout
    from kdseg.data.synthetic import SyntheticSpec

    spec = SyntheticSpec(n_cases=a.n_cases, shape=tuple(a.shape), seed=a.seed,
                         difficulty=a.difficulty, no_enhancing_fraction=a.no_enhancing_fraction)
    # brats + native + isotropic is synthesize_dataset itself (same files, same synthetic.json).
    ids = write_layout(Path(a.out), spec, a.layout, a.orientation, a.anisotropic)
    if (a.layout, a.orientation, a.anisotropic) == ("brats", "native", False):
        print(f"{len(ids)} synthetic cases in {a.out}")
    else:
        geometry = a.orientation + (", anisotropic" if a.anisotropic else "")
        print(f"{len(ids)} synthetic cases in {a.out} ({a.layout} layout, {geometry})")


def cmd_preprocess(a: argparse.Namespace) -> None:
    from kdseg.data.adapters import DatasetSource
    from kdseg.data.labels import get_convention
    from kdseg.data.preprocess import PreprocessOptions, preprocess_source

    if a.config_json:  # the workflow: the config's dataset and preprocess blocks
        blocks = json.loads(a.config_json)
        dataset, options = blocks["dataset"], PreprocessOptions.from_config(blocks["preprocess"])
    else:
        if not (a.root and a.modalities):
            raise ValueError("preprocess: give --config-json, or --root and --modalities")
        dataset = {"source": a.source, "root": a.root, "modalities": a.modalities,
                   "labels": a.labels, "manifest": a.manifest}
        options = PreprocessOptions(margin=a.margin)
    source = DatasetSource.from_config(dataset, root=a.root)
    convention = get_convention(dataset.get("labels", "brats"))
    manifest = preprocess_source(source, Path(a.out), convention, options)
    print(f"preprocessed {len(manifest)} cases ({source.source} layout, {convention.name} "
          f"labels) into {a.out}")


def cmd_split(a: argparse.Namespace) -> None:
    import pandas as pd

    from kdseg.data.splits import make_splits, read_split_file, write_splits

    manifest = pd.read_csv(a.manifest, dtype={"case": str})
    cases = manifest["case"].tolist()
    if a.file:
        splits = [read_split_file(Path(a.file), cases)]
    else:
        # Unpaired data: split each modality group alike, so every stream has training and
        # test cases.
        strata = (dict(zip(cases, manifest["modalities"].astype(str), strict=True))
                  if "modalities" in manifest else None)
        splits = make_splits(cases, a.folds, a.test_fraction, a.val_fraction, a.seed, strata)
    write_splits(splits, Path(a.out))
    for s in splits:
        print(f"fold {s['fold']}: {len(s['train'])} train, {len(s['val'])} val, "
              f"{len(s['test'])} test")


def cmd_init_tracking(a: argparse.Namespace) -> None:
    from kdseg.tracking import init_tracking, resolve_tracking_uri
    from kdseg.training.runinfo import write_json_atomic

    info: dict[str, object] = {"enabled": a.enabled}
    if a.enabled:
        uri = resolve_tracking_uri(a.uri, Path.cwd())
        info.update(uri=uri, experiment=a.experiment,
                    experiment_id=init_tracking(
                        uri, a.experiment, Path(a.artifact_root) if a.artifact_root else None))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(info, Path(a.out))
    print(json.dumps(info))


def cmd_write_run_config(a: argparse.Namespace) -> None:
    from kdseg.config import write_run_config

    write_run_config(json.loads(a.json), Path(a.out))


def cmd_train(a: argparse.Namespace) -> None:
    from kdseg.training.loop import train_run

    print(train_run(Path(a.run_dir), _tracking(a.tracking), a.threads))


def cmd_predict(a: argparse.Namespace) -> None:
    from kdseg.config import load_run_config
    from kdseg.data.preprocess import cases_with_modalities
    from kdseg.data.splits import load_fold
    from kdseg.inference.predict import predict_run

    cfg = load_run_config(Path(a.run_dir) / "run_config.yaml")
    cases = load_fold(Path(cfg.splits_file), cfg.fold)[a.split]
    # Unpaired data: a student predicts the cases that carry its modalities.
    cases = cases_with_modalities(Path(cfg.preprocessed_dir), cases, cfg.input_modalities)
    paths = predict_run(Path(a.run_dir), cases, Path(a.out))
    print(f"{len(paths)} predictions in {a.out}")


def cmd_evaluate(a: argparse.Namespace) -> None:
    from kdseg.config import load_run_config
    from kdseg.data.labels import get_convention
    from kdseg.data.preprocess import cases_with_modalities, reference_labels
    from kdseg.data.splits import load_fold
    from kdseg.evaluation.evaluate import evaluate_folder
    from kdseg.report.tables import metric_means
    from kdseg.tracking import sync_run_folder
    from kdseg.training.runinfo import write_json_atomic

    tracking = _tracking(a.tracking)  # read first: a bad --tracking path fails before any work
    run_dir = Path(a.run_dir)
    cfg = load_run_config(run_dir / "run_config.yaml")
    cases = load_fold(Path(cfg.splits_file), cfg.fold)["test"]
    # Unpaired data: a student is tested on the cases that carry its modalities.
    cases = cases_with_modalities(Path(cfg.preprocessed_dir), cases, cfg.input_modalities)
    references: Path | dict[str, Path] = (
        reference_labels(Path(a.references_from), cases) if a.references_from
        else Path(a.references))
    df = evaluate_folder(Path(a.predictions), references, get_convention(cfg.labels),
                         a.empty_rule, cases=cases, out_csv=Path(a.out),
                         nsd_tolerance_mm=a.nsd_tolerance_mm)
    means = metric_means(df, prefix="test")
    write_json_atomic(means, run_dir / "test_metrics.json")
    print(json.dumps(means, indent=1))
    if tracking:
        sync_run_folder(run_dir, tracking["uri"], tracking["experiment_id"])


def cmd_evaluate_folder(a: argparse.Namespace) -> None:
    from kdseg.data.labels import get_convention
    from kdseg.evaluation.evaluate import evaluate_folder

    df = evaluate_folder(Path(a.pred_dir), Path(a.ref_dir), get_convention(a.labels),
                         a.empty_rule, out_csv=Path(a.out), nsd_tolerance_mm=a.nsd_tolerance_mm)
    # One line per region and metric in evaluation order; mean/std/median skip NaN (nan rule),
    # so `n` says how many cases each line is over.
    table = df.groupby(["region", "metric"], sort=False)["value"].agg(
        ["mean", "std", "median", "count"]).rename(columns={"count": "n"})
    print(f"empty rule {a.empty_rule}, NSD tolerance {a.nsd_tolerance_mm:g} mm")
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))


def cmd_summarize(a: argparse.Namespace) -> None:
    from kdseg.report.summary import StatisticsOptions, write_summary

    options = StatisticsOptions(family=a.family, n_boot=a.n_boot, seed=a.seed,
                                ranking_metrics=tuple(a.ranking_metrics),
                                ranking_boot=a.ranking_boot)
    _, markdown = write_summary([Path(r) for r in a.runs], Path(a.out_dir), options)
    print(markdown)


def cmd_report(a: argparse.Namespace) -> None:
    from kdseg.report.html import ReportInputs, write_report

    tracking = _tracking(a.tracking)  # read first: a bad --tracking path fails before any work
    inputs = ReportInputs(
        summary_dir=Path(a.summary_dir), runs=[Path(r) for r in a.runs],
        preprocessed=Path(a.preprocessed),
        config=json.loads(a.config_json), overlay_cases=a.overlay_cases)
    index = write_report(inputs, Path(a.out_dir))
    print(f"report: {index}")
    if tracking:
        from kdseg.report.mlflow_summary import log_summary_run

        log_summary_run(inputs, Path(a.out_dir), tracking)


def cmd_bench(a: argparse.Namespace) -> None:
    from kdseg.bench.common import BenchOptions
    from kdseg.bench.runner import run_bench

    opts = BenchOptions(out=Path(a.out), config=Path(a.config), device=a.device,
                        threads=a.threads or 1, quick=a.quick, full_shape=tuple(a.full_shape),
                        repeats=a.repeats, gpu_patch=a.gpu_patch, compile=a.compile,
                        workdir=Path(a.workdir) if a.workdir else None)
    run_bench(opts, tuple(a.sections) if a.sections else BENCH_SECTIONS)


# Spelled out (a test keeps it equal to kdseg.bench.runner.SECTIONS) so that building the
# parser imports nothing heavy.
BENCH_SECTIONS = ("train_step", "data_pipeline", "inference", "evaluation", "preprocess",
                  "scaling")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kdseg", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="<stage>")

    def add(name: str, func, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        # Every stage: a workflow job uses exactly its rule's threads (kdseg.runtime).
        sp.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads this stage may use (torch, BLAS/OpenMP pools); the "
                             "workflow passes the rule's threads (default: the libraries' own)")
        return sp

    s = add("synthesize", cmd_synthesize, "write the built-in synthetic BraTS-like dataset")
    s.add_argument("--out", required=True)
    s.add_argument("--n-cases", type=int, default=40)
    s.add_argument("--shape", type=int, nargs=3, default=[96, 112, 96], metavar=("X", "Y", "Z"))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--difficulty", type=float, default=0.5)
    s.add_argument("--no-enhancing-fraction", type=float, default=0.2)
    # Choices as in kdseg.data.layouts (LAYOUTS, ORIENTATIONS; a test keeps them equal), spelled
    # out so that building the parser does not import nibabel/scipy.
    s.add_argument("--layout", default="brats",
                   choices=["brats", "brats2023", "msd", "manifest", "unpaired"],
                   help="folder layout and label numbering of a real dataset (default brats)")
    s.add_argument("--orientation", default="native",
                   choices=["native", "lps", "ras", "oblique", "permuted", "mixed"],
                   help="geometry of the written files; mixed cycles native, ras, oblique, "
                        "permuted over the cases (default native: as generated)")
    s.add_argument("--anisotropic", action="store_true",
                   help="keep every second axial slice (slice spacing doubled)")

    s = add("preprocess", cmd_preprocess, "validate and preprocess a dataset (any layout)")
    s.add_argument("--out", required=True)
    s.add_argument("--config-json", help="JSON {dataset: ..., preprocess: ...} config blocks "
                                          "(what the workflow passes)")
    s.add_argument("--root", help="dataset folder (overrides dataset.root)")
    s.add_argument("--source", default="brats", choices=["synthetic", "brats", "msd", "manifest"])
    s.add_argument("--manifest", help="CSV/TSV table for --source manifest")
    s.add_argument("--modalities", nargs="+")
    s.add_argument("--labels", default="brats")
    s.add_argument("--margin", type=int, default=2)

    s = add("split", cmd_split, "deterministic train/val/test (k-fold) splits")
    s.add_argument("--manifest", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--folds", type=int, default=1)
    s.add_argument("--test-fraction", type=float, default=0.25)
    s.add_argument("--val-fraction", type=float, default=0.15)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--file", help="predefined split: CSV/TSV with columns case, split")

    s = add("init-tracking", cmd_init_tracking, "create the MLflow DB and experiment once")
    s.add_argument("--uri", required=True)
    s.add_argument("--experiment", required=True)
    s.add_argument("--artifact-root", help="artifact folder; omit to let an MLflow server "
                                           "store artifacts (--artifacts-destination)")
    s.add_argument("--out", required=True)
    s.add_argument("--disabled", dest="enabled", action="store_false")

    s = add("write-run-config", cmd_write_run_config, "validate and write a resolved run config")
    s.add_argument("--json", required=True, help="the run config as a JSON string")
    s.add_argument("--out", required=True)

    s = add("train", cmd_train, "train the teacher or a student of a run folder (resumes)")
    s.add_argument("--run-dir", required=True)
    s.add_argument("--tracking", help="tracking JSON from init-tracking")

    s = add("predict", cmd_predict, "sliding-window predictions in the original geometry")
    s.add_argument("--run-dir", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--split", default="test", choices=["test", "val", "train"])

    s = add("evaluate", cmd_evaluate, "per-case metrics of a run's test predictions")
    s.add_argument("--run-dir", required=True)
    s.add_argument("--predictions", required=True)
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--references-from", metavar="PREPROCESSED",
                       help="preprocessed folder: the label files its case records name")
    where.add_argument("--references", help="reference folder (BraTS or <case>.nii.gz layout)")
    s.add_argument("--out", required=True)
    s.add_argument("--empty-rule", default="brats", choices=["brats", "nan"])
    s.add_argument("--nsd-tolerance-mm", type=float, default=1.0, metavar="FLOAT",
                   help="normalized surface Dice tolerance in mm (default 1.0)")
    s.add_argument("--tracking")

    s = add("evaluate-folder", cmd_evaluate_folder,
            "Dice/HD95/NSD/sensitivity/specificity of any folder of <case>.nii.gz predictions"
            " against references")
    s.add_argument("pred_dir")
    s.add_argument("ref_dir", help="BraTS layout (<case>/<case>_seg.nii.gz) or <case>.nii.gz")
    s.add_argument("--out", required=True)
    s.add_argument("--labels", default="brats")
    s.add_argument("--empty-rule", default="brats", choices=["brats", "nan"])
    s.add_argument("--nsd-tolerance-mm", type=float, default=1.0, metavar="FLOAT",
                   help="normalized surface Dice tolerance in mm (default 1.0)")

    s = add("summarize", cmd_summarize,
            "comparison tables, paired statistics and ranking over all evaluated runs")
    s.add_argument("--runs", nargs="+", required=True)
    s.add_argument("--out-dir", required=True)
    s.add_argument("--family", default="subset_region", choices=["subset_region", "global"],
                   help="Holm family of the paired tests")
    s.add_argument("--n-boot", type=int, default=2000, help="bootstrap samples of the CIs")
    s.add_argument("--seed", type=int, default=0, help="seed of every bootstrap")
    s.add_argument("--ranking-metrics", nargs="+", default=["dice", "hd95"])
    s.add_argument("--ranking-boot", type=int, default=1000)

    s = add("report", cmd_report,
            "figures and the self-contained HTML report (+ the MLflow summary run)")
    s.add_argument("--summary-dir", required=True, help="output folder of `summarize`")
    s.add_argument("--runs", nargs="+", required=True)
    s.add_argument("--preprocessed", required=True,
                   help="preprocessed folder (dataset.json, arrays for the overlays)")
    s.add_argument("--config-json", required=True, help="the workflow config as JSON")
    s.add_argument("--overlay-cases", type=int, default=3)
    s.add_argument("--out-dir", required=True)
    s.add_argument("--tracking")

    s = add("bench", cmd_bench, "performance benchmark: every stage against a reference "
                                "measured in the same process (docs/performance.md)")
    s.add_argument("sections", nargs="*", metavar="SECTION",
                   help=f"sections to run (default all): {', '.join(BENCH_SECTIONS)}")
    s.add_argument("--out", default="results/benchmarks", help="output folder")
    s.add_argument("--config", default="config/config.yaml",
                   help="workflow config whose model/patch/batch protocol is measured")
    s.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    s.add_argument("--quick", action="store_true",
                   help="tiny sizes: checks every code path runs; the numbers mean nothing")
    s.add_argument("--full-shape", type=int, nargs=3, default=[240, 240, 155],
                   metavar=("X", "Y", "Z"), help="full-size case grid (default BraTS's)")
    s.add_argument("--repeats", type=int, default=3, help="repetitions of the slow sections")
    s.add_argument("--gpu-patch", type=int, default=128, help="patch edge of the GPU figures")
    s.add_argument("--compile", action="store_true", help="also time torch.compile'd networks")
    s.add_argument("--workdir", help="scratch folder for generated data (default: temporary)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        # `train` splits its threads between torch and the loader workers (train_run).
        if args.threads is not None and args.command != "train":
            from kdseg.runtime import limit_threads

            limit_threads(args.threads)
        args.func(args)
    except (ValueError, FileNotFoundError) as err:  # expected problems; bugs keep a traceback
        if args.debug:
            raise
        print(f"kdseg {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0
