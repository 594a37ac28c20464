"""The training loop shared by the teacher and every student.

Reads one resolved run config, trains, and leaves a self-describing run folder::

    run_config.yaml      the job's resolved config (written by the workflow)
    checkpoint_last.pt   resume state, rewritten after every epoch
    history.csv          one row per epoch: losses (every named term), lr, validation Dice
    model.pt             final weights + run config (the artifact later stages read)
    run.json             run key, tags, params, git SHA, versions, seeds, device, timings, memory

The loop never branches on the method's name: the distiller returns named weighted loss terms
and declares which feature taps it reads and where its teacher comes from (``none``; a
``frozen`` teacher run, forwarded without autograd; or a ``joint`` teacher path trained in the
same steps, whose segmentation loss is added as ``teacher_seg``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.losses import DiceCELoss
from torch.utils.data import DataLoader
from tqdm import tqdm

from kdseg.config import RunConfig, TrainConfig, load_run_config, run_key
from kdseg.data.dataset import PatchDataset
from kdseg.data.labels import get_convention
from kdseg.data.preprocess import cases_with_modalities, load_preprocessed
from kdseg.data.splits import load_fold
from kdseg.distill.base import Distiller
from kdseg.distill.registry import build_distiller
from kdseg.evaluation.metrics import dice
from kdseg.fileio import atomic_path
from kdseg.inference.predict import load_model, predict_classes
from kdseg.models.factory import (
    NetOutput,
    TappedNetwork,
    build_network,
    resolve_memory_format,
    to_device,
)
from kdseg.tracking import epoch_metrics_logged_tag
from kdseg.training import checkpoint, runinfo

log = logging.getLogger("kdseg.train")


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but no CUDA device is available")
    return torch.device(name)


def seed_everything(seed: int, epoch: int) -> None:
    """Seed every RNG from (seed, epoch) so epoch e is identical whether or not the run resumed."""
    s = int(np.random.default_rng([seed, epoch]).integers(2**31))
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def make_optimizer(params: list[torch.nn.Parameter], train: TrainConfig) -> torch.optim.Optimizer:
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    if train.optimizer == "sgd":  # nnU-Net's choice
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, nesterov=True,
                               weight_decay=train.weight_decay)
    raise ValueError(f"train.optimizer must be 'adamw' or 'sgd', got {train.optimizer!r}")


def make_scheduler(opt: torch.optim.Optimizer,
                   train: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    if train.lr_schedule == "poly":  # nnU-Net: lr * (1 - epoch / epochs) ** 0.9
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: (1 - e / train.epochs) ** 0.9)
    if train.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
    raise ValueError(f"train.lr_schedule must be 'poly' or 'constant', got {train.lr_schedule!r}")


def load_teacher(cfg: RunConfig, device: torch.device) -> tuple[torch.nn.Module, list[int]]:
    """The frozen teacher and the channels (of the preprocessed image) it reads."""
    path = Path(str(cfg.teacher_dir)) / checkpoint.FINAL
    net, teacher_cfg = load_model(Path(str(cfg.teacher_dir)), device)
    for key in ("fold", "splits_file", "labels", "preprocessed_dir", "modalities"):
        # A teacher of another fold has seen this student's test cases: refuse, don't leak.
        if getattr(teacher_cfg, key) != getattr(cfg, key):
            raise ValueError(f"{path}: teacher {key}={getattr(teacher_cfg, key)!r} differs from "
                             f"the student's {getattr(cfg, key)!r}")
    if teacher_cfg.model != cfg.model:
        log.warning("teacher %s uses a different model config than the student", path)
    net.requires_grad_(False)
    return net, [cfg.modalities.index(m) for m in teacher_cfg.input_modalities]


def validate(net: torch.nn.Module, cfg: RunConfig, cases: list[str],
             device: torch.device) -> dict[str, float]:
    """Mean Dice per region over validation cases (sliding window over each whole case)."""
    convention = get_convention(cfg.labels)
    scores: dict[str, list[float]] = defaultdict(list)
    for case in cases[: cfg.train.max_val_cases]:
        image, classes, _ = load_preprocessed(Path(cfg.preprocessed_dir), case)
        x = torch.from_numpy(np.ascontiguousarray(image[cfg.input_channels]))
        pred = predict_classes(net, x, cfg.train.patch_size, cfg.inference, device, cfg.train.amp,
                               cfg.train.cudnn_benchmark)
        pred_regions = convention.region_masks(convention.to_labels(pred))
        ref_regions = convention.region_masks(convention.to_labels(np.asarray(classes)))
        for region, ref in ref_regions.items():
            d = dice(pred_regions[region], ref)
            scores[region].append(1.0 if math.isnan(d) else d)  # both empty -> 1 (BraTS rule)
    means = {f"val/dice/{r}": float(np.mean(v)) for r, v in scores.items()}
    means["val/dice/mean"] = float(np.mean(list(means.values()))) if means else float("nan")
    return means


def _incompatible(modules: dict[str, torch.nn.Module], state: dict[str, Any]) -> str | None:
    """Why ``state`` cannot be loaded into ``modules`` (e.g. a checkpoint written by an older
    network definition), or ``None``."""
    for key, module in modules.items():
        saved = state.get(key)
        own = module.state_dict()
        if not isinstance(saved, dict) or saved.keys() != own.keys() or any(
                saved[k].shape != own[k].shape for k in own):
            return f"weights that do not fit this network ({key})"
    return None


def input_fingerprint(cfg: RunConfig) -> str:
    """Hash of what a run's result depends on besides its config: the preprocessed dataset's
    fingerprint (``dataset.json``), this fold's split and the teacher's weights.

    A checkpoint is resumed only when config *and* inputs match, so regenerating the data,
    changing the split or retraining the teacher never continues from stale weights.
    """
    digest = hashlib.sha1()
    digest.update(Path(cfg.preprocessed_dir, "dataset.json").read_bytes())
    split = load_fold(Path(cfg.splits_file), cfg.fold)
    digest.update(json.dumps(split, sort_keys=True).encode())
    if cfg.teacher_dir:
        digest.update(Path(cfg.teacher_dir, checkpoint.FINAL).read_bytes())
    return digest.hexdigest()[:10]


class Trainer:
    """Holds the pieces of one run; :meth:`fit` is the loop."""

    def __init__(self, run_dir: Path, tracker: Any | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.cfg = load_run_config(self.run_dir / "run_config.yaml")
        self.tracker = tracker
        cfg = self.cfg
        self.inputs = input_fingerprint(cfg)
        self.device = select_device(cfg.train.device)
        self.amp = cfg.train.amp and self.device.type == "cuda"  # bf16 autocast on GPU only
        if self.device.type == "cuda":  # fixed patch size: let cuDNN pick its fastest kernels,
            # or (cudnn_benchmark: false) use deterministic ones
            torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark
            torch.backends.cudnn.deterministic = not cfg.train.cudnn_benchmark
        fmt = cfg.train.memory_format
        split = load_fold(Path(cfg.splits_file), cfg.fold)
        data_dir = Path(cfg.preprocessed_dir)
        # Unpaired data: a network trains and validates on the cases carrying its inputs.
        train_cases = cases_with_modalities(data_dir, split["train"], cfg.input_modalities)
        if not train_cases:
            raise ValueError(f"{cfg.splits_file}: no training case of fold {cfg.fold} carries "
                             f"the modalities {list(cfg.input_modalities)}")
        self.val_cases = cases_with_modalities(data_dir, split["val"], cfg.input_modalities)
        self.num_classes = get_convention(cfg.labels).num_classes
        n_all = len(cfg.modalities)
        torch.manual_seed(cfg.seed)
        self.distiller: Distiller = build_distiller(cfg.method, cfg.model, self.num_classes)
        self.distiller.to(self.device)
        # An unpaired method's second stream draws the cases the student's stream cannot use
        # (on unpaired data: the other modality's cases); on paired data, any other case.
        others = [c for c in split["train"] if c not in set(train_cases)]
        self.data = PatchDataset(data_dir, train_cases, cfg.train.patch_size,
                                 cfg.train.foreground_prob, cfg.seed,
                                 unpaired=self.distiller.unpaired,
                                 other_cases=others if self.distiller.unpaired and others
                                 else None)
        n_student = len(cfg.input_modalities)
        n_in = self.distiller.student_in_channels(n_student, n_all)
        self.net = to_device(self._initial_student(n_student, n_in), self.device, fmt)
        self.joint = self.distiller.teacher == "joint"
        self.teacher: torch.nn.Module | None = None
        self.teacher_channels: list[int] = []
        if self.distiller.teacher == "frozen":
            self.teacher, self.teacher_channels = load_teacher(cfg, self.device)
            self.teacher = self.teacher.to(
                memory_format=resolve_memory_format(fmt, self.device)).eval()
        elif self.joint:  # a full-modality teacher path trained in the same steps
            self.teacher = to_device(build_network(cfg.model, n_all, self.num_classes),
                                     self.device, fmt)
            self.teacher_channels = list(range(n_all))
            self.distiller.bind(self.net, self.teacher)
        # The forward passes the step runs: each network with its method's feature taps,
        # compiled when train.compile is set.
        self.student_forward = self._forward(self.net, self.distiller.student_taps)
        self.teacher_forward = (self._forward(self.teacher, self.distiller.teacher_taps)
                                if self.teacher is not None else None)
        self.seg_loss = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False,
                                   batch=True)
        # Gradient clipping per network (student, joint teacher path, method heads), so a
        # jointly trained teacher's gradients never shrink the student's step.
        groups = [list(self.net.parameters())]
        if self.joint:
            groups.append(list(self.teacher.parameters()))  # type: ignore[union-attr]
        groups.append(list(self.distiller.parameters()))
        seen: set[int] = set()
        self.clip_groups = []
        for group in groups:  # a shared kernel (ummkd) belongs to the first group only
            unique = [p for p in group if id(p) not in seen]
            seen.update(map(id, unique))
            if unique:
                self.clip_groups.append(unique)
        self.params = [p for group in self.clip_groups for p in group]
        self.optimizer = make_optimizer(self.params, cfg.train)
        self.scheduler = make_scheduler(self.optimizer, cfg.train)
        self.history: list[dict[str, float]] = []
        self.start_epoch = 0

    def _forward(self, net: torch.nn.Module, taps: Any) -> Any:
        tapped = TappedNetwork(net, taps)  # type: ignore[arg-type]
        if not self.cfg.train.compile:
            return tapped
        # One graph per network: fixed patch and batch, hooks registered before compiling.
        return torch.compile(tapped, dynamic=False)

    def _initial_student(self, n_student: int, n_in: int) -> torch.nn.Module:
        """The student network with the seed's initial weights, identical for every method of
        a seed; a wider training-time stem (ummkd's zero fill) keeps its own draw."""
        torch.manual_seed(self.cfg.seed)
        plain = build_network(self.cfg.model, n_student, self.num_classes)
        if n_in == n_student:
            return plain
        wide = build_network(self.cfg.model, n_in, self.num_classes)
        own = wide.state_dict()
        wide.load_state_dict({k: v if v.shape == own[k].shape else own[k]
                              for k, v in plain.state_dict().items()})
        return wide

    # ---------------------------------------------------------------- resume
    def state(self) -> dict[str, Any]:
        state = {key: module.state_dict() for key, module in self._modules_to_resume().items()}
        state.update({"optimizer": self.optimizer.state_dict(),
                      "scheduler": self.scheduler.state_dict(), "epoch": len(self.history),
                      "history": self.history, "run_config": self.cfg.to_dict(),
                      "inputs": self.inputs})
        return state

    def _modules_to_resume(self) -> dict[str, torch.nn.Module]:
        modules = {"model": self.net, "distiller": self.distiller}
        if self.joint:
            modules["teacher_path"] = self.teacher  # type: ignore[assignment]
        return modules

    def student_state(self) -> dict[str, torch.Tensor]:
        """``state_dict`` of a plain student network (the student's modalities as inputs)."""
        return self.distiller.export_student(self.net.state_dict(), self.cfg.input_channels)

    def student_network(self) -> torch.nn.Module:
        """The trained student as the plain network inference builds (eval mode)."""
        net = build_network(self.cfg.model, len(self.cfg.input_modalities), self.num_classes)
        net.load_state_dict(self.student_state())
        return to_device(net, self.device, self.cfg.train.memory_format).eval()

    def try_resume(self) -> None:
        """Continue from ``checkpoint_last.pt`` if it belongs to this exact run config and
        inputs; otherwise (or if it is unreadable) move it aside and start fresh."""
        path = self.run_dir / checkpoint.LAST
        if not path.exists():
            return
        try:
            state = checkpoint.load(path, self.device)
            reason = ("a different run config" if state.get("run_config") != self.cfg.to_dict()
                      else "different inputs" if state.get("inputs") != self.inputs
                      else _incompatible(self._modules_to_resume(), state))
        except ValueError:
            reason = "an unreadable file"
        if reason is not None:
            stale = path.with_name(f"checkpoint_stale_{int(time.time())}.pt")
            path.rename(stale)  # keep it: nothing computed is silently thrown away
            log.warning("checkpoint_last.pt holds %s; moved to %s, starting fresh", reason, stale)
            return
        for key, module in self._modules_to_resume().items():
            module.load_state_dict(state[key])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = list(state["history"])
        self.start_epoch = int(state["epoch"])
        log.info("resumed from %s at epoch %d", path, self.start_epoch)

    # ---------------------------------------------------------------- one step
    def step(self, image: torch.Tensor, label: torch.Tensor,
             teacher_image: torch.Tensor | None = None,
             teacher_label: torch.Tensor | None = None) -> dict[str, float]:
        """One optimisation step on a batch: image ``(B, C_all, *P)``, label ``(B, 1, *P)``;
        an unpaired method's teacher path gets its own batch (``teacher_image/label``)."""
        image = image.to(self.device, non_blocking=True)
        label = label.to(self.device, non_blocking=True)
        if teacher_image is None:
            teacher_image, teacher_label = image, None
        else:
            teacher_image = teacher_image.to(self.device, non_blocking=True)
            teacher_label = teacher_label.to(self.device, non_blocking=True)  # type: ignore[union-attr]
        student_x = self.distiller.student_input(image, self.cfg.input_channels)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            teacher_out: NetOutput | None = None
            terms: dict[str, torch.Tensor] = {}
            if self.teacher_forward is not None:
                teacher_x = teacher_image[:, self.teacher_channels]
                with torch.set_grad_enabled(self.joint):  # a frozen teacher: no autograd
                    teacher_out = NetOutput(*self.teacher_forward(teacher_x))
            student_out = NetOutput(*self.student_forward(student_x))
            terms["seg"] = self.seg_loss(student_out.logits.float(), label)
            if self.joint:
                terms["teacher_seg"] = self.seg_loss(
                    teacher_out.logits.float(),  # type: ignore[union-attr]
                    label if teacher_label is None else teacher_label)
            kd_terms = self.distiller(student_out, teacher_out, label, teacher_label)
            clash = set(kd_terms) & {*terms, "loss"}
            if clash:
                raise ValueError(f"{type(self.distiller).__name__} returned reserved term "
                                 f"name(s) {sorted(clash)}")
            terms.update(kd_terms)
            loss = torch.stack(list(terms.values())).sum()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} (terms: "
                                     f"{ {k: v.item() for k, v in terms.items()} })")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in self.clip_groups:
            torch.nn.utils.clip_grad_norm_(group, self.cfg.train.grad_clip)
        self.optimizer.step()
        return {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}}

    # ---------------------------------------------------------------- the loop
    def write_history(self) -> None:
        with atomic_path(self.run_dir / "history.csv") as tmp:
            pd.DataFrame(self.history).to_csv(tmp, index=False)

    def fit(self, until_epoch: int | None = None) -> dict[str, float]:
        """Train from ``start_epoch`` to ``train.epochs`` (or stop early after ``until_epoch``
        epochs, e.g. to fit a cluster time limit; the next call resumes from the checkpoint)."""
        cfg, train = self.cfg, self.cfg.train
        stop = train.epochs if until_epoch is None else min(until_epoch, train.epochs)
        # Persistent workers: forked once per run, not once per epoch (each fork re-imports
        # nothing but re-opens every case's memory map); they read the epoch from shared
        # memory (PatchDataset.set_epoch), so the stream stays a function of (seed, epoch).
        # The loader has its own generator: a DataLoader iterator draws a base seed when it is
        # created, which persistent workers do once per process, not once per epoch; from the
        # global RNG that would make a resumed run's later epochs draw differently.
        loader = DataLoader(self.data, batch_size=train.batch_size, num_workers=train.num_workers,
                            pin_memory=self.device.type == "cuda",
                            persistent_workers=train.num_workers > 0,
                            generator=torch.Generator().manual_seed(cfg.seed))
        for epoch in range(self.start_epoch, stop):
            t0 = time.perf_counter()
            seed_everything(cfg.seed, epoch)
            self.data.set_epoch(epoch)
            self.net.train()
            if self.joint:
                self.teacher.train()  # type: ignore[union-attr]
            sums: dict[str, float] = defaultdict(float)
            batches = iter(loader)
            bar = tqdm(range(train.iterations_per_epoch), desc=f"epoch {epoch + 1}/{train.epochs}",
                       file=sys.stderr, mininterval=1 if sys.stderr.isatty() else 30, leave=False)
            t_steps = time.perf_counter()
            for _ in bar:
                for key, value in self.step(*next(batches)).items():
                    sums[key] += value
                bar.set_postfix(loss=f"{sums['loss'] / (bar.n + 1):.3f}", refresh=False)
            steps_s = time.perf_counter() - t_steps  # data + optimisation, no validation
            row: dict[str, float] = {"epoch": epoch}
            row.update({f"train/{k}": v / train.iterations_per_epoch for k, v in sums.items()})
            row["lr"] = self.optimizer.param_groups[0]["lr"]
            self.scheduler.step()
            if self.val_cases and ((epoch + 1) % train.val_every == 0 or epoch + 1 == train.epochs):
                row.update(validate(self.student_network(), cfg, self.val_cases, self.device))
            row["time/steps_s"] = steps_s
            row["time/epoch_s"] = time.perf_counter() - t0
            self.history.append(row)
            checkpoint.save_atomic(self.state(), self.run_dir / checkpoint.LAST)
            self.write_history()
            log.info("epoch %d/%d %s", epoch + 1, train.epochs,
                     " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
            if self.tracker is not None:
                # metrics and the progress tag in one request: a crash can re-log, never skip
                self.tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"},
                                         step=epoch, tags=epoch_metrics_logged_tag(epoch))
        return self.history[-1] if self.history else {}


def run_tags(cfg: RunConfig, key: str) -> dict[str, str]:
    return {
        "kdseg.stage": cfg.stage, "kdseg.method": cfg.method_name, "kdseg.subset": cfg.subset,
        "kdseg.n_modalities": str(len(cfg.input_modalities)), "kdseg.fold": str(cfg.fold),
        "kdseg.seed": str(cfg.seed), "kdseg.dataset": cfg.dataset, "kdseg.run_key": key,
        "kdseg.git_sha": runinfo.git_sha(),
    }


def run_name(cfg: RunConfig) -> str:
    if cfg.stage == "teacher":
        return f"teacher f{cfg.fold} s{cfg.seed}"
    return f"{cfg.method_name} [{cfg.subset}] f{cfg.fold} s{cfg.seed}"


def train_run(run_dir: Path, tracking: dict[str, str] | None = None,
              threads: int | None = None) -> Path:
    """Train the run in ``run_dir`` (resuming if possible); returns the path of ``model.pt``.

    ``threads``: the cores the job may use. ``train.num_workers`` DataLoader workers (one
    thread each) take one core each; torch computes on the rest (at least one thread).
    """
    from kdseg.runtime import limit_threads, thread_report
    from kdseg.tracking import RunTracker, flatten_params

    started = time.time()
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir / "run_config.yaml")
    if threads:
        limit_threads(max(1, threads - cfg.train.num_workers))
    key = run_key(cfg, input_fingerprint(cfg))
    tags = run_tags(cfg, key)
    params = flatten_params(cfg.to_dict())
    tracker = None
    if tracking:
        tracker = RunTracker.open(tracking["uri"], tracking["experiment_id"], key,
                                  run_name(cfg), tags, params)
    try:
        trainer = Trainer(run_dir, tracker)
        trainer.try_resume()
        last = trainer.fit()
    except BaseException as err:  # close the MLflow run; the checkpoint allows a resume
        if tracker is not None:
            tracker.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    trainer.write_history()  # also when a resumed run had no epoch left to train
    checkpoint.save_atomic({"state_dict": trainer.student_state(), "run_config": cfg.to_dict()},
                           run_dir / checkpoint.FINAL)
    info = {
        "run_key": key, "run_name": run_name(cfg), "tags": tags, "params": params,
        "git_sha": tags["kdseg.git_sha"], "versions": runinfo.versions(),
        "seed": cfg.seed, "device": runinfo.device_description(trainer.device),
        "threads": torch.get_num_threads(), "thread_pools": thread_report(),
        "num_workers": cfg.train.num_workers, "resumed_from_epoch": trainer.start_epoch,
        "wall_time_s": time.time() - started,
        "train_time_s": float(sum(r.get("time/epoch_s", 0.0) for r in trainer.history)),
        "steps_time_s": float(sum(r.get("time/steps_s", 0.0) for r in trainer.history)),
        "final": last, **runinfo.peak_memory_mb(trainer.device),
        "mlflow_run_id": getattr(tracker, "run_id", None),
    }
    runinfo.write_json_atomic(info, run_dir / "run.json")
    if tracker is not None:
        tracker.log_metrics({"time/train_s": info["train_time_s"],
                             "memory/peak_rss_mb": info["peak_rss_mb"]}, step=len(trainer.history))
        tracker.log_artifact(run_dir / "run.json")
        tracker.finish("FINISHED")
    return run_dir / checkpoint.FINAL
