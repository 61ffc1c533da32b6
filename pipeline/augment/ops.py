"""The op set of AutoAugment, RandAugment and TrivialAugment: pure kernels plus their magnitude table.

A kernel is `kernel(img, **params) -> img` over one uint8 (H, W, C) image, C in {1, 3}. It has
no randomness of its own: what is random (the sign of a signed op, Cutout's centre,
SamplePairing's partner) is drawn first by `draw` from a generator the caller seeds (STYLE 6),
so a drawn op can be logged, replayed and tested.

Magnitudes run from 0 to 10, the scale of the AutoAugment code (`PARAMETER_MAX = 10`), which
is the scale its published policies are written in: a parameter is
`at_0 + (at_10 - at_0) * magnitude / 10`. The ranges are data (`SPACES`): `standard` is the
space of Cubuk et al. 2018/2019 as torchvision's `_auto_augment.py` writes it (enhancement
factors are 1 ± 0.9 and Posterize runs from 8 bits down to 4, so magnitude 0 is the identity);
`wide` is TrivialAugment's wide space (Müller & Hutter 2021). Geometric ops use nearest
neighbour sampling like the papers' PIL code, and `fill` for uncovered pixels.

The kernels are albumentations' functional ones where they compute the papers' op
(Posterize, Invert, Brightness, Contrast, Color, Cutout) and OpenCV or NumPy where
albumentations has no such op (PIL's Sharpness, SamplePairing), computes a slightly different
one (Equalize, AutoContrast) or costs several times the work on small images (affine warps,
Solarize's table). Geometric ops, Equalize and AutoContrast match PIL exactly; the blends
round where PIL truncates, so they match it within a grey level or two
(tests/test_augment_ops.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from albumentations.augmentations.dropout import functional as fdrop  # noqa: E402
from albumentations.augmentations.pixel import functional as fpix  # noqa: E402

from pipeline.core.registry import Registry


@dataclass(frozen=True)
class Range:
    """How magnitude 0..10 maps to an op's parameter; signed ops flip around `around`."""

    param: str
    at_0: float
    at_10: float
    signed: bool = False
    around: float = 0.0
    integer: bool = False

    def value(self, magnitude: float, sign: int = 1) -> float | int:
        v = self.at_0 + (self.at_10 - self.at_0) * magnitude / 10.0
        if self.signed:
            v = self.around + sign * (v - self.around)
        return int(round(v)) if self.integer else round(float(v), 6)


def _enhance(max_delta: float) -> Range:
    return Range("factor", 1.0, 1.0 + max_delta, signed=True, around=1.0)


# op -> Range, or None for an op without a magnitude. Translations and Cutout are fractions of
# the image side (torchvision: 150/331 of the size; TrivialAugment wide: 32 px of CIFAR's 32).
SPACES: dict[str, dict[str, Range | None]] = {
    "standard": {
        "Identity": None,
        "ShearX": Range("shear", 0.0, 0.3, signed=True),
        "ShearY": Range("shear", 0.0, 0.3, signed=True),
        "TranslateX": Range("fraction", 0.0, 150 / 331, signed=True),
        "TranslateY": Range("fraction", 0.0, 150 / 331, signed=True),
        "Rotate": Range("degrees", 0.0, 30.0, signed=True),
        "AutoContrast": None,
        "Invert": None,
        "Equalize": None,
        "Solarize": Range("threshold", 256, 0, integer=True),
        "Posterize": Range("bits", 8, 4, integer=True),
        "Contrast": _enhance(0.9),
        "Color": _enhance(0.9),
        "Brightness": _enhance(0.9),
        "Sharpness": _enhance(0.9),
        "Cutout": Range("size", 0.0, 0.2),
        "SamplePairing": Range("weight", 0.0, 0.4),
    },
}
# TrivialAugment's wide space: the same ops, larger magnitudes
SPACES["wide"] = {
    **SPACES["standard"],
    "ShearX": Range("shear", 0.0, 0.99, signed=True),
    "ShearY": Range("shear", 0.0, 0.99, signed=True),
    "TranslateX": Range("fraction", 0.0, 1.0, signed=True),
    "TranslateY": Range("fraction", 0.0, 1.0, signed=True),
    "Rotate": Range("degrees", 0.0, 135.0, signed=True),
    "Posterize": Range("bits", 8, 2, integer=True),
    "Contrast": _enhance(0.99),
    "Color": _enhance(0.99),
    "Brightness": _enhance(0.99),
    "Sharpness": _enhance(0.99),
}


def _keep_channels(out: np.ndarray, like: np.ndarray) -> np.ndarray:
    """OpenCV drops a trailing channel axis of 1; put it back."""
    return out.reshape(like.shape) if out.ndim != like.ndim else out


def _warp(img: np.ndarray, inverse: list[list[float]], fill: int) -> np.ndarray:
    """Affine warp given the output -> input map in pixel-index coordinates, nearest neighbour."""
    h, w = img.shape[:2]
    out = cv2.warpAffine(
        img,
        np.asarray(inverse, np.float64),
        (w, h),
        flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(fill,) * 4,
    )
    return _keep_channels(out, img)


def _warp_pil(img: np.ndarray, a: float, b: float, c: float, d: float, e: float, f: float, fill: int) -> np.ndarray:
    """PIL's `Image.transform(AFFINE, (a, b, c, d, e, f))`: its map runs between pixel centres
    (x + 0.5, y + 0.5) and it floors where OpenCV rounds, hence the half-pixel terms."""
    return _warp(img, [[a, b, c + (a + b - 1) / 2], [d, e, f + (d + e - 1) / 2]], fill)


def identity(img: np.ndarray) -> np.ndarray:
    return img


def shear_x(img: np.ndarray, shear: float, fill: int = 0) -> np.ndarray:
    """Input x = x + shear * y, about the top-left corner (the AutoAugment code's PIL affine)."""
    return _warp_pil(img, 1, shear, 0, 0, 1, 0, fill)


def shear_y(img: np.ndarray, shear: float, fill: int = 0) -> np.ndarray:
    return _warp_pil(img, 1, 0, 0, shear, 1, 0, fill)


def translate_x(img: np.ndarray, fraction: float, fill: int = 0) -> np.ndarray:
    """Content moves left by round(fraction * width) pixels (right when negative)."""
    return _warp_pil(img, 1, 0, round(fraction * img.shape[1]), 0, 1, 0, fill)


def translate_y(img: np.ndarray, fraction: float, fill: int = 0) -> np.ndarray:
    return _warp_pil(img, 1, 0, 0, 0, 1, round(fraction * img.shape[0]), fill)


def rotate(img: np.ndarray, degrees: float, fill: int = 0) -> np.ndarray:
    """Counter-clockwise about the centre of the pixel grid, like PIL's `Image.rotate`."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), -degrees, 1.0)  # output -> input
    return _warp(img, m.tolist(), fill)


def auto_contrast(img: np.ndarray) -> np.ndarray:
    """Each channel stretched linearly so its darkest pixel is 0 and its brightest 255.

    PIL's `ImageOps.autocontrast` to the pixel (albumentations bins its histogram over
    [0, 255) in 256 bins, which moves the end points by a grey level now and then).
    """
    out = np.empty_like(img)
    i = np.arange(256, dtype=np.float64)
    for c in range(img.shape[2]):
        lo, hi = int(img[..., c].min()), int(img[..., c].max())
        if hi <= lo:
            out[..., c] = img[..., c]
            continue
        scale = 255.0 / (hi - lo)
        lut = np.clip(np.trunc(i * scale - lo * scale), 0, 255).astype(np.uint8)
        out[..., c] = lut[img[..., c]]
    return out


def invert(img: np.ndarray) -> np.ndarray:
    return fpix.invert(img)


def equalize(img: np.ndarray) -> np.ndarray:
    """Histogram equalisation of each channel, PIL's `ImageOps.equalize` to the pixel.

    (albumentations' `equalize(mode="pil")` counts each bin's own pixels in its cumulative
    sum where PIL counts only the darker ones, which shifts the result by one bin.)
    """
    out = np.empty_like(img)
    for c in range(img.shape[2]):
        hist = np.bincount(img[..., c].ravel(), minlength=256)
        nonzero = hist[hist > 0]
        step = (int(nonzero.sum()) - int(nonzero[-1])) // 255
        if len(nonzero) <= 1 or step == 0:
            out[..., c] = img[..., c]
            continue
        lut = (step // 2 + np.concatenate([[0], np.cumsum(hist)[:-1]])) // step
        out[..., c] = np.minimum(lut, 255).astype(np.uint8)[img[..., c]]
    return out


@lru_cache(maxsize=None)
def _solarize_lut(threshold: int) -> np.ndarray:
    i = np.arange(256)
    return np.where(i >= threshold, 255 - i, i).astype(np.uint8)


def solarize(img: np.ndarray, threshold: int) -> np.ndarray:
    """Pixels at or above `threshold` are inverted (PIL's `ImageOps.solarize`); 256 is the identity."""
    return _keep_channels(cv2.LUT(img, _solarize_lut(int(threshold))), img)


def posterize(img: np.ndarray, bits: int) -> np.ndarray:
    """Keep the top `bits` bits of each pixel; 8 is the identity."""
    return img if bits >= 8 else fpix.posterize(img, int(bits))


def contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the mean grey level (PIL's `ImageEnhance.Contrast`); 1 is the identity."""
    return _keep_channels(fpix.adjust_contrast_torchvision(img, factor), img)


def color(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the greyscale image (PIL's `ImageEnhance.Color`); a no-op on 1 channel."""
    return _keep_channels(fpix.adjust_saturation_torchvision(img, factor), img)


def brightness(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with black, i.e. scale (PIL's `ImageEnhance.Brightness`)."""
    return _keep_channels(fpix.adjust_brightness_torchvision(img, factor), img)


_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13


def sharpness(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with PIL's SMOOTH-filtered image, border pixels kept (PIL's `ImageEnhance.Sharpness`)."""
    if factor == 1.0:
        return img
    smooth = _keep_channels(cv2.filter2D(img, -1, _SMOOTH, borderType=cv2.BORDER_REPLICATE), img)
    smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1] = img[0], img[-1], img[:, 0], img[:, -1]
    return _keep_channels(cv2.addWeighted(smooth, 1.0 - factor, img, factor, 0.0), img)


def cutout(img: np.ndarray, size: float, cy: int, cx: int, fill: int = 0) -> np.ndarray:
    """A square of side round(size * side) centred at (cy, cx), clipped at the border, set to `fill`."""
    h, w = img.shape[:2]
    sh, sw = round(size * h), round(size * w)
    if sh == 0 or sw == 0:
        return img
    y0, x0 = max(0, cy - sh // 2), max(0, cx - sw // 2)
    y1, x1 = min(h, cy - sh // 2 + sh), min(w, cx - sw // 2 + sw)
    return fdrop.cutout(img, np.array([[x0, y0, x1, y1]]), fill, None)


def sample_pairing(img: np.ndarray, weight: float, partner: np.ndarray) -> np.ndarray:
    """(1 - weight) * img + weight * partner, rounded (Inoue 2018, as AutoAugment uses it)."""
    if partner.shape != img.shape:
        raise ValueError(f"SamplePairing: partner shape {partner.shape} differs from image shape {img.shape}")
    return _keep_channels(cv2.addWeighted(img, 1.0 - weight, partner, weight, 0.0), img)


KERNELS: Registry[Callable[..., np.ndarray]] = Registry(
    "op",
    [
        ("Identity", identity),
        ("ShearX", shear_x),
        ("ShearY", shear_y),
        ("TranslateX", translate_x),
        ("TranslateY", translate_y),
        ("Rotate", rotate),
        ("AutoContrast", auto_contrast),
        ("Invert", invert),
        ("Equalize", equalize),
        ("Solarize", solarize),
        ("Posterize", posterize),
        ("Contrast", contrast),
        ("Color", color),
        ("Brightness", brightness),
        ("Sharpness", sharpness),
        ("Cutout", cutout),
        ("SamplePairing", sample_pairing),
    ],
)
OPS = tuple(KERNELS)
_FILLED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Cutout"}
assert all(set(space) == set(KERNELS) for space in SPACES.values()), "every op needs a range in every space"


def check_op(name: str) -> str:
    if name not in KERNELS:
        raise ValueError(f"unknown op {name!r}; must be one of {', '.join(OPS)}")
    return name


def has_magnitude(name: str, space: str = "standard") -> bool:
    return SPACES[space][check_op(name)] is not None


def draw(
    name: str,
    magnitude: float | None,
    rng: np.random.Generator,
    shape: tuple[int, ...],
    space: str = "standard",
    fill: int = 0,
    pool_size: int = 0,
) -> dict:
    """The parameters of one application of op `name`: everything random is drawn here."""
    rng_ = SPACES[space][check_op(name)]
    params: dict = {}
    if rng_ is not None:
        sign = -1 if rng_.signed and rng.random() < 0.5 else 1
        params[rng_.param] = rng_.value(magnitude or 0.0, sign)
    if name in _FILLED:
        params["fill"] = fill
    if name == "Cutout":
        params["cy"], params["cx"] = int(rng.integers(shape[0])), int(rng.integers(shape[1]))
    if name == "SamplePairing":
        if pool_size < 1:
            raise ValueError("SamplePairing needs a pool of partner images (pool_size >= 1)")
        params["partner"] = int(rng.integers(pool_size))
    return params


def apply(img: np.ndarray, name: str, params: dict, pool: np.ndarray | None = None) -> np.ndarray:
    """Apply op `name` with drawn `params`; SamplePairing's `partner` indexes `pool`."""
    if "partner" in params:
        if pool is None:
            raise ValueError("SamplePairing needs the pool its partner index was drawn from")
        params = {**params, "partner": np.asarray(pool[params["partner"]])}
    return KERNELS[name](img, **params)
