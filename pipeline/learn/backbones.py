"""Backbones: networks trained elsewhere, loaded as the pipeline's eyes (the course's transfer
learning: "do not start from scratch").

`backbone.name` is `timm:<architecture>` (any model timm builds) or the project's own small_cnn /
resnet; `backbone.weights` is where its weights come from:

- a pipeline model file (`python -m pipeline pretrain`, or train's model): any architecture, with
  its own normalisation and input size;
- for timm architectures, a state dict file (safetensors, or a .pth / .bin torch file, in timm's or
  the original repository's key names: timm's loader converts the ones it knows), or `hub`: timm
  fetches the pretrained weights (a machine that is online; the file is cached by timm).

`load` gives a `models.Classifier` in eval mode: `features(x)` on float NCHW pixels in [0, 1] are
the embeddings, with the normalisation (timm's pretrained mean / std, or the file's) inside. A
missing file, a file of another architecture or a key of the wrong shape fails on one line naming
the key, the file and what was expected.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.core.errors import PipelineError
from pipeline.core.params import TIMM, Backbone
from pipeline.learn import checkpoints, models, tensors

HUB = "hub"


@dataclass(frozen=True)
class Loaded:
    model: models.Classifier  # eval mode; `features` are the embeddings
    image_size: int  # the side the images are decoded at
    channels: int  # 1 or 3: what the images are decoded to
    weights: str  # where the weights came from, for the metrics: "hub" or the file's name
    width: int = 0  # the project's own models' width (what `models.build_model` needs to rebuild it)


def load(cfg: Backbone, data_channels: int) -> Loaded:
    """The backbone `cfg` names with its weights, for images of `data_channels` channels."""
    if cfg.name is None:
        raise PipelineError("backbone.name: no backbone is set (timm:<architecture>, small_cnn or resnet)")
    if cfg.weights != HUB and not Path(cfg.weights).is_file():
        raise PipelineError(f"backbone.weights: {cfg.weights}: no such file (a checkpoint file, or {HUB})")
    blob = None if cfg.weights == HUB else _read(Path(cfg.weights))
    if blob is not None and checkpoints.is_model_file(blob):
        model, config, _ = checkpoints.load_model(cfg.weights, blob)
        if config["model"] != cfg.name:
            raise PipelineError(
                f"backbone.weights: {cfg.weights}: a pipeline model file of {config['model']}, "
                f"but backbone.name is {cfg.name}"
            )
        size = cfg.image_size or config.get("input_size") or config["image_size"][0]
        weights = Path(cfg.weights).name
        return Loaded(_frozen(model, cfg.image_size), size, config["in_channels"], weights, config["width"])
    if not cfg.name.startswith(TIMM):
        raise PipelineError(
            f"backbone.weights: {cfg.weights}: {cfg.name} loads from a pipeline model file "
            "(python -m pipeline pretrain --out FILE), not a bare state dict"
        )
    net, pretrained = _timm(cfg, data_channels)
    mean, std = pretrained["mean"], pretrained["std"]
    if data_channels == 1:  # timm sums the first conv's RGB filters for in_chans=1: grey is the mean
        mean, std = [float(np.mean(mean))], [float(np.mean(std))]
    size = cfg.image_size or int(pretrained["input_size"][-1])
    model = models.Classifier(models.TimmBody(net), int(net.num_features), 1, mean, std)
    model.head, model.num_classes = torch.nn.Identity(), 0  # features only: no classifier
    return Loaded(_frozen(model, size), size, data_channels, HUB if blob is None else Path(cfg.weights).name)


def for_training(
    cfg: Backbone, channels: int, num_classes: int, generator: torch.Generator
) -> tuple[models.Classifier, int]:
    """(the backbone with its weights and a new head of `num_classes`, trainable, for fine-tuning
    (`train.init: backbone`); its width, for the model file). The images' `channels` must be what
    the weights take."""
    loaded = load(cfg, channels)
    if loaded.channels != channels:
        raise PipelineError(
            f"backbone.weights: {cfg.weights}: takes {loaded.channels}-channel images; the data has {channels} "
            "(set ingest.channels to match)"
        )
    model = loaded.model
    model.head, model.num_classes = torch.nn.Linear(model.embed_dim, num_classes), num_classes
    models.init_weights(model.head, generator)
    model.requires_grad_(True)
    return model.train(), loaded.width


def model_config(loaded: Loaded, name: str, num_classes: int) -> dict:
    """A `checkpoints.save_model` config for the backbone with a head of `num_classes` (a probe)."""
    m = loaded.model
    return {
        "format_version": checkpoints.FORMAT_VERSION,
        "model": name,
        "in_channels": loaded.channels,
        "num_classes": num_classes,
        "width": loaded.width,
        "image_size": [loaded.image_size] * 2,
        "input_size": loaded.image_size,
        "mean": m.normalize.mean.flatten().tolist(),
        "std": m.normalize.std.flatten().tolist(),
        "backbone_weights": loaded.weights,
    }


def _frozen(model: models.Classifier, size: int | None) -> models.Classifier:
    model.input_size = size or model.input_size
    model.requires_grad_(False)
    return model.eval().to(memory_format=torch.channels_last)


def _read(path: Path) -> dict:
    """A checkpoint's contents (tensors and plain data only), or a one-line error."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure is the same user mistake: not a checkpoint
        raise PipelineError(
            f"backbone.weights: {path}: not a checkpoint (safetensors, or a torch state dict): {type(e).__name__}"
        ) from None


class _TimmLoadLog(logging.Handler):
    """What timm's loader says while it loads: it loads non-strictly when it drops the classifier,
    and only logs the keys it could not place. Kept here, they become an error."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.problems: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(("Missing keys", "Unexpected keys")):
            kind, keys = message.split(" (", 1)
            keys = keys.split(")")[0].split(", ")
            self.problems.append(f"{len(keys)} {kind.lower()}, such as {keys[0]}")
        elif message.startswith("Unable to convert"):
            self.problems.append(message)


def _timm(cfg: Backbone, channels: int):
    """(timm model without its classifier, its pretrained config) with `cfg.weights` loaded
    through timm's own loader (which drops the classifier, converts the key names it knows and
    adapts the first conv to `channels`); any key it cannot place is an error."""
    import timm

    arch = cfg.name.removeprefix(TIMM)
    models.timm_body(arch, channels)  # a one-line error for an unknown architecture
    overlay = {} if cfg.weights == HUB else {"file": str(cfg.weights)}
    where = HUB if cfg.weights == HUB else cfg.weights
    log, said = logging.getLogger("timm.models._builder"), _TimmLoadLog()
    log.addHandler(said)
    try:
        net = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=0, in_chans=channels)
    except (RuntimeError, KeyError, ValueError) as e:
        if cfg.weights == HUB:
            raise PipelineError(
                f"backbone.weights: hub: timm could not fetch {arch}'s pretrained weights ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:160]}); offline, point backbone.weights at a local file"
            ) from None
        raise PipelineError(f"backbone.weights: {where}: {_mismatch(cfg.weights, arch)}") from None
    except OSError as e:  # the hub unreachable (huggingface_hub raises OSError subclasses)
        raise PipelineError(
            f"backbone.weights: hub: cannot download {arch}'s weights ({type(e).__name__}); "
            "offline, point backbone.weights at a local file"
        ) from None
    finally:
        log.removeHandler(said)
    if said.problems:
        raise PipelineError(f"backbone.weights: {where}: not a state dict of timm's {arch}: {'; '.join(said.problems)}")
    return net, net.pretrained_cfg


def _mismatch(path: str, arch: str) -> str:
    """What is wrong with a state dict that timm could not load into `arch`: the first key of
    another shape, named."""
    from timm.models import load_state_dict

    theirs = load_state_dict(path)
    ours = models.timm_body(arch, 3)[0].net.state_dict()  # as saved: RGB (timm adapts the first conv after)
    shapes = [k for k in ours if k in theirs and tuple(theirs[k].shape) != tuple(ours[k].shape)]
    if shapes:
        k = shapes[0]
        return f"key {k} has shape {list(theirs[k].shape)}; timm's {arch} expects {list(ours[k].shape)}"
    return f"timm could not load it as {arch}"


def features(loaded: Loaded, pixels: np.ndarray, dev: torch.device, bf16: bool) -> np.ndarray:
    """Embeddings (N, D) float32 of uint8 NHWC `pixels` at the backbone's size."""
    x = tensors.to_unit(tensors.to_tensor(pixels)).to(dev, memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
        return loaded.model.features(x).float().cpu().numpy()
