"""The model registry: small CNNs for images of any size >= 8, 1 or 3 channels, and any timm
architecture by name (`timm:resnet18`), the backbones of pipeline/learn/backbones.py.

Every model takes float NCHW pixels in [0, 1] and normalises them itself with per-channel
`mean` / `std` buffers (computed from the train split by `fit`), so attacks and
augmentations work in pixel space and a saved `state_dict` carries the normalisation.
`model.features(x)` is the penultimate embedding (after global average pooling) and
`model(x)` the logits. Weights use He initialisation, drawn from an optional
`torch.Generator` so that a model is reproducible whatever the global RNG state. A model with
an `input_size` resizes what it is given to that size first (a backbone pretrained at 224 px
takes the 28 or 64 px images of the store as they are, and attacks still work in their pixels).
"""

from __future__ import annotations

import difflib
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.core.errors import PipelineError
from pipeline.core.params import TIMM
from pipeline.core.registry import Registry

MIN_SIZE = 8


class Normalize(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """Resize (to `input_size`, if set) -> normalise -> body -> global average pool (`features`) ->
    linear head (logits)."""

    def __init__(
        self,
        body: nn.Module,
        embed_dim: int,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        input_size: int | None = None,
    ):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.body = body
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(embed_dim, num_classes)
        self.embed_dim, self.num_classes, self.input_size = embed_dim, num_classes, input_size
        self.frozen_body = False  # fine-tuning's head-only phase: the body stays in eval mode

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if self.frozen_body:
            self.body.eval()  # a frozen body's batch-norm statistics stay the pretrained ones
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or min(x.shape[-2:]) < MIN_SIZE:
            raise PipelineError(f"expected NCHW images of at least {MIN_SIZE}x{MIN_SIZE}, got shape {tuple(x.shape)}")
        size = self.input_size
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return self.pool(self.body(self.normalize(x))).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TimmBody(nn.Module):
    """A timm model without its classifier (num_classes=0: it ends in its own pooling), shaped as a
    (N, D, 1, 1) map so that `Classifier` takes it like the small CNNs. `net` keeps timm's names:
    a timm state dict loads into it as is."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, :, None, None]


def timm_body(arch: str, in_channels: int, generator: torch.Generator | None = None) -> tuple[TimmBody, int]:
    """timm's `arch`, randomly initialised (timm's own init, seeded from `generator`), headless."""
    import timm

    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f" (close names: {', '.join(close)})" if close else ""
        raise PipelineError(f"timm has no architecture {arch!r}{hint}")
    seed = int(torch.randint(2**62, (1,), generator=generator)) if generator is not None else 0
    with torch.random.fork_rng(devices=[]):  # timm initialises from the global RNG: fork it, seeded
        torch.manual_seed(seed)
        net = timm.create_model(arch, pretrained=False, num_classes=0, in_chans=in_channels)
    return TimmBody(net), int(net.num_features)


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def small_cnn(in_channels: int, width: int) -> tuple[nn.Module, int]:
    """Three VGG-style stages of two 3x3 convs (width, 2x, 4x); max-pool after the first two.

    Pooling early keeps the FLOPs low (most of them are spent at full resolution);
    width 16 gives about 73K parameters.
    """
    w = width
    body = nn.Sequential(
        *_conv_bn(in_channels, w),
        *_conv_bn(w, w),
        nn.MaxPool2d(2),
        *_conv_bn(w, 2 * w),
        *_conv_bn(2 * w, 2 * w),
        nn.MaxPool2d(2),
        *_conv_bn(2 * w, 4 * w),
        *_conv_bn(4 * w, 4 * w),
    )
    return body, 4 * w


class BasicBlock(nn.Module):
    """He et al. 2016's two-conv residual block, projection shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet(in_channels: int, width: int, blocks: Sequence[int] = (1, 1, 1)) -> tuple[nn.Module, int]:
    """A CIFAR-style ResNet: 3x3 stem, three stages (width, 2x, 4x; stride 1, 2, 2)."""
    layers: list[nn.Module] = _conv_bn(in_channels, width)
    c = width
    for i, n in enumerate(blocks):
        c_out = width * 2**i
        for j in range(n):
            layers.append(BasicBlock(c, c_out, stride=2 if i > 0 and j == 0 else 1))
            c = c_out
    return nn.Sequential(*layers), c


MODELS: Registry[Callable[[int, int], tuple[nn.Module, int]]] = Registry(
    "model (train.model)", [("small_cnn", small_cnn), ("resnet", resnet)]
)


def init_weights(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """He-normal convs (fan-out, as torchvision's ResNet), small normal head, BN at 1/0.

    The last BN of each residual branch starts at zero (Goyal et al. 2017): every block
    begins as the identity, which makes the first epochs stable at a high learning rate.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01, generator=generator)
            nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)


def build_model(
    name: str,
    in_channels: int,
    num_classes: int,
    width: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
    input_size: int | None = None,
) -> Classifier:
    """A registered model (or `timm:<arch>`); `mean` / `std` are per-channel, in [0, 1] pixel units."""
    if in_channels not in (1, 3):
        raise PipelineError(f"expected 1 or 3 input channels, got {in_channels}")
    mean = [0.0] * in_channels if mean is None else [float(m) for m in mean]
    std = [1.0] * in_channels if std is None else [float(s) for s in std]
    if len(mean) != in_channels or len(std) != in_channels:
        raise PipelineError(f"expected mean/std of length {in_channels}, got {len(mean)}/{len(std)}")
    if name.startswith(TIMM):
        body, embed_dim = timm_body(name.removeprefix(TIMM), in_channels, generator)
        model = Classifier(body, embed_dim, num_classes, mean, std, input_size)
        init_weights(model.head, generator)  # the body keeps timm's own initialisation
        return model
    body, embed_dim = MODELS[name](in_channels, width)
    model = Classifier(body, embed_dim, num_classes, mean, std, input_size)
    init_weights(model, generator)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
