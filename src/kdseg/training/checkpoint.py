"""Checkpoints: plain ``state_dict`` files with the run config inside, written atomically.

* ``checkpoint_last.pt``: everything needed to resume (model, distiller, optimizer, scheduler,
  next epoch, history). Written after every epoch; an interrupted job resumes from it.
* ``model.pt``: the final weights plus the run config, the artifact every later stage reads.

Both load with ``torch.load(..., weights_only=True)``: no pickled code is executed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdseg.fileio import atomic_path

LAST = "checkpoint_last.pt"
FINAL = "model.pt"


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temp file in the same folder, then rename: never a half-written file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; a clear error naming the file if it is not one."""
    try:
        return torch.load(Path(path), map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for corrupt / foreign files
        raise ValueError(f"{path}: not a readable kdseg checkpoint ({err})") from None


def load_model_file(path: Path, map_location: str | torch.device = "cpu") -> tuple[dict, dict]:
    """``(state_dict, run_config dict)`` from a ``model.pt``."""
    ckpt = load(path, map_location)
    missing = {"state_dict", "run_config"} - set(ckpt)
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {sorted(missing)}")
    return ckpt["state_dict"], ckpt["run_config"]
