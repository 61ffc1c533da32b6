"""Model files: a `state_dict` plus its config and classes (versioned), loaded with
`weights_only=True`; oof's fold models."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from pipeline.core.errors import PipelineError
from pipeline.core.params import Train
from pipeline.learn import models, runtime

FORMAT_VERSION = 1


def model_config(model: nn.Module, x_train: np.ndarray, cfg: Train, num_classes: int, seed: int) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "model": cfg.model,
        "in_channels": int(x_train.shape[-1]),
        "num_classes": num_classes,
        "width": cfg.width,
        "image_size": list(x_train.shape[1:3]),
        "input_size": model.input_size,  # None: the model takes the images at their own size
        "mean": model.normalize.mean.flatten().tolist(),
        "std": model.normalize.std.flatten().tolist(),
        "seed": seed,
        "threads": runtime.threads(cfg),
        "train": cfg.model_dump(),
    }


def save_model(path: str | Path, model: nn.Module, config: dict, classes: list[str]) -> None:
    """Atomically write {state_dict, config, classes}; the same model gives the same bytes."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}  # loads anywhere
    buf = io.BytesIO()  # a buffer, not the path: the archive's inner names stay path-independent
    torch.save(
        {"format_version": FORMAT_VERSION, "state_dict": state, "config": dict(config), "classes": list(classes)}, buf
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def fold_models(oof_dir: str | Path, device: torch.device | None = None) -> list[nn.Module]:
    """The oof stage's fold models (eval mode) on `device`, in fold order."""
    from pipeline.core import artifacts

    return [load_model(f)[0].to(device) for f in artifacts.fold_model_files(oof_dir)]


def is_model_file(blob: object) -> bool:
    """Whether a loaded checkpoint is a `save_model` file (not a bare state dict)."""
    return isinstance(blob, dict) and "format_version" in blob and "state_dict" in blob


def load_model(path: str | Path, blob: dict | None = None) -> tuple[nn.Module, dict, list[str]]:
    """(model in eval mode, config, classes) from a `save_model` file (or its loaded `blob`);
    tensors and plain data only."""
    path = Path(path)
    if blob is None and not path.exists():
        raise PipelineError(f"{path}: no such model file (has the train stage run?)")
    blob = torch.load(path, map_location="cpu", weights_only=True) if blob is None else blob
    if not is_model_file(blob) or blob.get("format_version") != FORMAT_VERSION:
        raise PipelineError(f"{path}: not a pipeline model file of format version {FORMAT_VERSION}")
    config = blob["config"]
    model = models.build_model(
        config["model"],
        config["in_channels"],
        config["num_classes"],
        config["width"],
        input_size=config.get("input_size"),
    )
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model.to(memory_format=torch.channels_last), config, list(blob["classes"])
