"""Benchmark config (``config/config.yaml``) checks and per-job run configs.

Two layers:

* The workflow config is validated structurally by the JSON schema in
  ``workflow/schemas/config.schema.yaml`` (Snakemake's ``validate``, which also fills defaults)
  and semantically by :func:`check_config` (modality names, subsets, method options).
* Each expensive job reads one resolved *run config* (``run_config.yaml``), built here by
  :func:`teacher_run_config` / :func:`student_run_config` and parsed by :func:`load_run_config`
  into frozen dataclasses. Unknown keys are errors at every level (no ``**kwargs`` sinks).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from kdseg.distill.options import METHOD_OPTIONS, OptionsError, options_dict, parse_method
from kdseg.fileio import write_text_atomic


class ConfigError(ValueError):
    """The config is invalid; the message names the key and the problem."""


# --------------------------------------------------------------------------- run config types


@dataclass(frozen=True)
class ModelConfig:
    """MONAI ``DynUNet`` (nnU-Net-style 3D U-Net) settings shared by teacher and students.

    ``filters`` gives the channel width per resolution level; its length is the depth
    (``len(filters) - 1`` stride-2 downsamplings).
    """

    filters: tuple[int, ...] = (8, 16, 32, 64)
    kernel_size: int = 3
    norm: str = "instance"
    dropout: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    """One protocol for every network: optimizer, schedule, budget, patches, augmentation."""

    patch_size: tuple[int, int, int] = (32, 32, 32)
    batch_size: int = 2
    epochs: int = 10
    iterations_per_epoch: int = 50
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 3e-5
    momentum: float = 0.99
    lr_schedule: str = "poly"
    foreground_prob: float = 0.33
    val_every: int = 1
    max_val_cases: int = 8
    amp: bool = True
    device: str = "auto"
    num_workers: int = 0
    grad_clip: float = 12.0
    memory_format: str = "auto"
    cudnn_benchmark: bool = True
    compile: bool = False


@dataclass(frozen=True)
class InferenceConfig:
    """MONAI sliding-window inference settings (ROI = training patch size)."""

    overlap: float = 0.5
    sw_batch_size: int = 4
    mode: str = "gaussian"


@dataclass(frozen=True)
class RunConfig:
    """Everything one training job needs; written to and read from ``run_config.yaml``."""

    stage: str
    dataset: str
    preprocessed_dir: str
    splits_file: str
    labels: Any  # a convention name (str) or a label-map mapping (kdseg.data.labels)
    modalities: tuple[str, ...]
    input_modalities: tuple[str, ...]
    subset: str
    method: dict[str, Any]
    fold: int
    seed: int
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    teacher_dir: str | None = None

    @property
    def method_name(self) -> str:
        return str(self.method["name"])

    @property
    def input_channels(self) -> list[int]:
        """Indices of ``input_modalities`` in the preprocessed image's channel axis."""
        return [self.modalities.index(m) for m in self.input_modalities]

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))


def plain(obj: Any) -> Any:
    """Tuples -> lists recursively, so YAML/JSON dumps are plain and hashes are stable."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj


def _parse(cls: type, data: Mapping[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types name ``where.key``."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(names)}")
    values = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**values)
    except TypeError as err:  # a required key is missing
        raise ConfigError(f"{where}: {err}") from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _parse(hint, value, where)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        item = get_args(hint)[0]
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or hint is Any:
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (bool, str) and isinstance(value, hint):
        return value
    raise ConfigError(f"{where} must be {getattr(hint, '__name__', hint)}, got {value!r}")


def parse_run_config(data: Mapping[str, Any], where: str = "run_config") -> RunConfig:
    """Strictly parse a run config mapping (e.g. the copy stored inside a checkpoint)."""
    return _parse(RunConfig, data, where)


def load_run_config(path: Path) -> RunConfig:
    """Read and strictly parse a ``run_config.yaml``; errors name the file and key."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read run config: {err}") from None
    try:
        return _parse(RunConfig, data, "run_config")
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def write_run_config(data: Mapping[str, Any], path: Path) -> None:
    """Validate ``data`` as a RunConfig, then write it as YAML (atomically)."""
    cfg = _parse(RunConfig, data, "run_config")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(yaml.safe_dump(cfg.to_dict(), sort_keys=False), path)


def config_hash(data: Mapping[str, Any]) -> str:
    """Stable short hash of a (run) config: part of the MLflow run key."""
    blob = json.dumps(plain(dict(data)), sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:10]


def run_key(cfg: RunConfig, inputs: str = "") -> str:
    """Deterministic identity of a training job: reruns of the same job find the same MLflow run.

    ``inputs`` is the fingerprint of the job's input data (``training.loop.input_fingerprint``),
    so a job retrained on new data or from a new teacher gets a new run.
    """
    key = (f"{cfg.dataset}/{cfg.stage}/{cfg.subset}/{cfg.method_name}/fold{cfg.fold}"
           f"/seed{cfg.seed}/{config_hash(cfg.to_dict())}")
    return f"{key}-{inputs}" if inputs else key


# --------------------------------------------------------------------------- workflow config


def canonical_subset(modalities: Sequence[str]) -> str:
    """Canonical wildcard for a modality subset: sorted names joined by ``+`` (``flair+t1ce``)."""
    return "+".join(sorted(modalities))


def all_subsets(modalities: Sequence[str]) -> list[str]:
    """Every non-empty subset, singles -> pairs -> ... -> full (RFNet/mmFormer table order)."""
    return [
        canonical_subset(combo)
        for size in range(1, len(modalities) + 1)
        for combo in itertools.combinations(modalities, size)
    ]


def student_subsets(config: Mapping[str, Any]) -> list[str]:
    """The configured student subsets as canonical strings, in config order (or ``all``)."""
    modalities = list(config["dataset"]["modalities"])
    spec = config["students"]["subsets"]
    if spec == "all":
        return all_subsets(modalities)
    out = []
    for i, entry in enumerate(spec):
        mods = entry.split("+") if isinstance(entry, str) else list(entry)
        unknown = sorted(set(mods) - set(modalities))
        if unknown or not mods:
            raise ConfigError(
                f"students.subsets[{i}]: unknown modality {unknown or entry!r}; "
                f"dataset.modalities is {modalities}"
            )
        if len(set(mods)) != len(mods):
            raise ConfigError(f"students.subsets[{i}]: repeated modality in {entry!r}")
        out.append(canonical_subset(mods))
    if len(set(out)) != len(out):
        raise ConfigError(f"students.subsets: duplicate subsets in {out}")
    return out


def resolved_methods(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Student methods to run -> fully resolved option blocks (``name``, ``kind``, options)."""
    defined = config.get("methods") or {}
    out = {}
    for i, name in enumerate(config["students"]["methods"]):
        if name not in defined:
            raise ConfigError(
                f"students.methods[{i}]: method {name!r} is not defined under 'methods' "
                f"(defined: {sorted(defined)})"
            )
        try:
            kind, options = parse_method(name, defined[name])
        except OptionsError as err:
            raise ConfigError(str(err)) from None
        out[name] = {"name": name, **options_dict(kind, options)}
    return out


def method_teacher(method: Mapping[str, Any]) -> str:
    """``none`` | ``frozen`` | ``joint`` (see ``MethodOptions.teacher``)."""
    return METHOD_OPTIONS[method["kind"]].teacher


def method_needs_teacher(method: Mapping[str, Any]) -> bool:
    """True when the student must wait for (and read) a separately trained teacher run."""
    return method_teacher(method) == "frozen"


def has_teacher(config: Mapping[str, Any]) -> bool:
    """Whether the benchmark trains a separate all-modality teacher: not on unpaired data,
    where no case carries every modality."""
    return not config["dataset"].get("unpaired", False)


def _check_dataset(config: Mapping[str, Any]) -> None:
    from kdseg.data.labels import get_convention  # light module; kept local like the others

    dataset = config["dataset"]
    source = dataset["source"]
    if source in ("brats", "msd") and not dataset.get("root"):
        raise ConfigError(f"dataset.root is required when dataset.source is {source!r}")
    if source == "manifest" and not dataset.get("manifest"):
        raise ConfigError("dataset.manifest (a CSV/TSV file) is required when dataset.source "
                          "is 'manifest'")
    if dataset.get("manifest") and source != "manifest":
        raise ConfigError(f"dataset.manifest is only read by source 'manifest' (source is "
                          f"{source!r})")
    if dataset.get("unpaired") and source != "manifest":
        raise ConfigError("dataset.unpaired: only a manifest can describe unpaired cases")
    stray = sorted(set(dataset.get("modality_files") or {}) - set(dataset["modalities"]))
    if stray:
        raise ConfigError(f"dataset.modality_files: {stray} are not in dataset.modalities")
    try:
        get_convention(dataset.get("labels", "brats"))
    except ValueError as err:
        raise ConfigError(f"dataset.labels: {err}") from None


def _check_unpaired_methods(config: Mapping[str, Any]) -> None:
    """On unpaired data only single-stream ``baseline`` and ``ummkd`` in unpaired mode work:
    every other method (and the teacher) needs all modalities of one case at once."""
    for subset in student_subsets(config):
        if "+" in subset:
            raise ConfigError(f"students.subsets: {subset!r} needs cases carrying several "
                              f"modalities, but dataset.unpaired is true (each case has one); "
                              f"use single modalities")
    for name, block in resolved_methods(config).items():
        if block["kind"] == "baseline":
            continue
        if block["kind"] == "ummkd" and block.get("unpaired"):
            continue
        hint = ("set unpaired: true in its options" if block["kind"] == "ummkd" else
                "use baseline or ummkd (unpaired: true)")
        raise ConfigError(
            f"students.methods: {name!r} ({block['kind']}) needs paired inputs (every "
            f"modality of the same case), but dataset.unpaired is true; {hint}"
        )


def check_config(config: Mapping[str, Any]) -> None:
    """Semantic checks the JSON schema cannot express. Raises ``ConfigError`` naming the key."""
    modalities = list(config["dataset"]["modalities"])
    if len(set(modalities)) != len(modalities):
        raise ConfigError(f"dataset.modalities: repeated names in {modalities}")
    _check_dataset(config)
    student_subsets(config)
    resolved_methods(config)
    if not has_teacher(config):
        _check_unpaired_methods(config)
    if config["splits"].get("file") and config["splits"]["folds"] != 1:
        raise ConfigError("splits.file gives one predefined split; set splits.folds to 1")
    model = _parse(ModelConfig, config.get("model", {}), "model")
    _parse(InferenceConfig, config.get("inference", {}), "inference")
    factor = 2 ** (len(model.filters) - 1)  # the U-Net halves the patch len(filters)-1 times
    for where, block in (("train", config.get("train", {})),
                         ("teacher.train", {**config.get("train", {}),
                                            **config["teacher"].get("train", {})})):
        train = _parse(TrainConfig, block, where)
        if any(p % factor for p in train.patch_size):
            raise ConfigError(f"{where}.patch_size {list(train.patch_size)} must be divisible by "
                              f"{factor} (2 ** (len(model.filters) - 1))")
    if config["splits"]["folds"] < 1:
        raise ConfigError("splits.folds must be >= 1")


def data_dir(config: Mapping[str, Any]) -> str:
    """``results/<dataset name>``: root of everything this dataset's benchmark writes."""
    return f"{config['results_dir']}/{config['dataset']['name']}"


def _run_config(config: Mapping[str, Any], *, stage: str, subset: str, method: dict[str, Any],
                fold: int, seed: int, train_overrides: Mapping[str, Any],
                teacher_dir: str | None) -> dict[str, Any]:
    base = data_dir(config)
    data = {
        "stage": stage,
        "dataset": config["dataset"]["name"],
        "preprocessed_dir": f"{base}/preprocessed",
        "splits_file": f"{base}/splits.json",
        "labels": config["dataset"]["labels"],
        "modalities": list(config["dataset"]["modalities"]),
        "input_modalities": subset.split("+"),
        "subset": subset,
        "method": method,
        "fold": int(fold),
        "seed": int(seed),
        "model": dict(config.get("model", {})),
        "train": {**config.get("train", {}), **train_overrides},
        "inference": dict(config.get("inference", {})),
        "teacher_dir": teacher_dir,
    }
    # Parse once so the written file is complete (defaults filled) and known to be valid.
    return _parse(RunConfig, data, "run_config").to_dict()


def teacher_subset(config: Mapping[str, Any]) -> str:
    return canonical_subset(config["dataset"]["modalities"])


def teacher_dir(config: Mapping[str, Any], fold: int | str, seed: int | str) -> str:
    """Run folder of a teacher; with ``"{fold}"``/``"{seed}"`` it is the Snakemake pattern."""
    return f"{data_dir(config)}/runs/teacher/fold{fold}/seed{seed}"


def student_dir(config: Mapping[str, Any], subset: str, method: str, fold: int | str,
                seed: int | str) -> str:
    """Run folder of a student; with wildcard names in braces it is the Snakemake pattern."""
    return f"{data_dir(config)}/runs/student/{subset}/{method}/fold{fold}/seed{seed}"


def train_benchmark_file(run_dir: str) -> str:
    """Snakemake ``benchmark:`` TSV of a run folder's training job (wildcard patterns too).

    ``<data>/runs/<kind...>/fold<F>/seed<S>`` -> ``<data>/benchmarks/<kind...>/fold<F>_seed<S>
    .train.tsv``; the cost table reads it back with :func:`kdseg.report.cost.collect_costs`.
    """
    head, found, rest = str(run_dir).rpartition("/runs/")
    if not found:
        raise ValueError(f"{run_dir}: not a run folder (no '/runs/' in the path)")
    parent, _, seed_part = rest.rpartition("/")
    return f"{head}/benchmarks/{parent}_{seed_part}.train.tsv"


def train_job_threads(config: Mapping[str, Any], stage: str) -> int:
    """Cores one training job of ``stage`` (``teacher`` or ``student``) occupies: its torch
    threads (``resources.train_threads``) plus one per DataLoader worker
    (``train.num_workers``, with the teacher's overrides), so that Snakemake never runs more
    work than ``--cores`` at once. ``kdseg train --threads N`` splits N back the same way."""
    train = dict(config["train"])
    if stage == "teacher":
        train.update(config.get("teacher", {}).get("train", {}))
    return int(config["resources"]["train_threads"]) + int(train.get("num_workers", 0))


def teacher_run_config(config: Mapping[str, Any], fold: int, seed: int) -> dict[str, Any]:
    """Resolved run config of the teacher (all modalities) for one fold and seed."""
    return _run_config(
        config, stage="teacher", subset=teacher_subset(config),
        method={"name": "teacher", "kind": "baseline"}, fold=fold, seed=seed,
        train_overrides=config["teacher"].get("train", {}), teacher_dir=None,
    )


def student_run_config(config: Mapping[str, Any], subset: str, method: str, fold: int,
                       seed: int) -> dict[str, Any]:
    """Resolved run config of one student (subset x method x fold x seed)."""
    block = resolved_methods(config)[method]
    needs = method_needs_teacher(block)
    return _run_config(
        config, stage="student", subset=subset, method=block, fold=fold, seed=seed,
        train_overrides={}, teacher_dir=teacher_dir(config, fold, seed) if needs else None,
    )
