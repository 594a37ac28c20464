"""Predict whole cases with MONAI's sliding-window inference and write NIfTI label maps.

Predictions are made on the preprocessed (RAS, cropped, normalised) arrays and then restored to
each case's **original** geometry (shape, orientation, affine) with BraTS label values, so any
external tool can compare them with the source files voxel for voxel.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.inferers import sliding_window_inference
from tqdm import tqdm

from kdseg.config import InferenceConfig, RunConfig, parse_run_config
from kdseg.data.geometry import CaseGeometry, restore_prediction
from kdseg.data.labels import get_convention
from kdseg.data.preprocess import load_preprocessed
from kdseg.fileio import atomic_path
from kdseg.models.factory import build_network, to_device
from kdseg.training import checkpoint

log = logging.getLogger("kdseg.predict")


@torch.no_grad()
def predict_logits(net: torch.nn.Module, image: torch.Tensor, roi_size: Sequence[int],
                   inference: InferenceConfig, device: torch.device,
                   amp: bool = False) -> torch.Tensor:
    """Sliding-window logits ``(K, X, Y, Z)`` for one case ``image`` of shape ``(C, X, Y, Z)``.

    Windows of ``roi_size`` (the training patch) overlap by ``inference.overlap`` and are blended
    with ``inference.mode`` weights; cases smaller than the window are padded by MONAI.
    """
    was_training = net.training
    net.eval()
    x = image[None].to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
        logits = sliding_window_inference(
            x, roi_size=tuple(roi_size), sw_batch_size=inference.sw_batch_size, predictor=net,
            overlap=inference.overlap, mode=inference.mode,
        )
    net.train(was_training)
    return torch.as_tensor(logits)[0].float()


def predict_classes(net: torch.nn.Module, image: torch.Tensor, roi_size: Sequence[int],
                    inference: InferenceConfig, device: torch.device,
                    amp: bool = False) -> np.ndarray:
    """Class ids ``(X, Y, Z)`` (uint8) by argmax over the sliding-window logits."""
    logits = predict_logits(net, image, roi_size, inference, device, amp)
    # max(dim).indices == argmax(dim) (first maximum on ties) but much faster on the CPU for a
    # leading class axis.
    return logits.max(dim=0).indices.to(torch.uint8).cpu().numpy()


def load_model(run_dir: Path, device: torch.device) -> tuple[torch.nn.Module, RunConfig]:
    """The trained network of a run folder (on ``device``, eval mode) and its run config."""
    path = Path(run_dir) / checkpoint.FINAL
    state, cfg_dict = checkpoint.load_model_file(path, device)
    cfg = parse_run_config(cfg_dict, f"{path}:run_config")
    num_classes = get_convention(cfg.labels).num_classes
    net = build_network(cfg.model, len(cfg.input_modalities), num_classes)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:  # e.g. a model.pt written by an older network definition
        detail = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise ValueError(f"{path}: the weights do not fit the network kdseg builds from its "
                         f"run config ({detail}); it was probably trained by an older kdseg "
                         f"version: retrain it (delete the run folder, or snakemake "
                         f"--forcerun on its train rule)") from None
    return to_device(net, device).eval(), cfg


def predict_run(run_dir: Path, cases: Sequence[str], out_dir: Path,
                device: torch.device | None = None, progress: bool = True) -> list[Path]:
    """Predict ``cases`` with the model in ``run_dir``; writes ``out_dir/<case>.nii.gz``.

    Files are written atomically; a case whose prediction exists is skipped (resume).
    """
    if device is None:
        from kdseg.config import load_run_config
        from kdseg.training.loop import select_device

        device = select_device(load_run_config(Path(run_dir) / "run_config.yaml").train.device)
    net, cfg = load_model(run_dir, device)
    convention = get_convention(cfg.labels)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for case in tqdm(cases, desc=f"predict {Path(run_dir).name}", file=sys.stderr,
                     disable=not progress):
        target = out_dir / f"{case}.nii.gz"
        if not target.exists():
            image, _, meta = load_preprocessed(Path(cfg.preprocessed_dir), case)
            x = torch.from_numpy(np.ascontiguousarray(image[cfg.input_channels]))
            classes = predict_classes(net, x, cfg.train.patch_size, cfg.inference, device,
                                      cfg.train.amp)
            # A resampled case goes back with the interpolation its labels came with.
            back = (meta.get("resampling") or {}).get("label_interpolation", "nearest")
            img = restore_prediction(classes, CaseGeometry.from_dict(meta), convention, back)
            with atomic_path(target) as tmp:
                nib.save(img, tmp)
        written.append(target)
    return written
