"""Image-quality properties of the originals, measured at ingest (before the resize loses the aspect
ratio, the size and the detail): cleanvision's definitions, vectorised over a batch of images.

Per image (`PROPERTIES`): the original width and height; the 5th and 99th percentiles of per-pixel
brightness (sqrt(0.241 R^2 + 0.691 G^2 + 0.068 B^2) / 255); the entropy of the pixel histogram per
band (Pillow's `Image.entropy`, which cleanvision uses, puts the three bands' histograms side by side,
so a flat colour image has log2(3) = 1.58 bits and cleanvision's low_information at Datalab's 0.15 can
never flag a colour image: this subtracts that floor); blurriness, the standard deviation of
Pillow's FIND_EDGES filter inside the border (`_edges`) on the grey image at most 64 px a side, and
the standard deviation of that grey image's histogram (NaN, so never blurry, for a strip with no
inside at that size); whether the image has no colour (R = G = B everywhere; cleanvision goes by
the file's mode). The detectors that turn them into
flags are clean's (`pipeline/quality/issues.py`: dark, light, blurry, low_information,
odd_aspect_ratio, odd_size, grayscale); tests/test_image_quality.py holds both to cleanvision.

Hand-written rather than calling cleanvision per image: cleanvision opens each file itself and
measures one image at a time (about 190 us for a 28x28 image here); ingest already holds the decoded
image, and an in-memory dataset (70,000 Fashion-MNIST arrays) is measured in one vectorised pass.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

PROPERTIES = ("width", "height", "brightness_p5", "brightness_p99", "entropy", "blurriness", "grey_hist_std", "grey")
COLUMNS = tuple(f"quality_{p}" for p in PROPERTIES)  # the manifest's columns
BLUR_SIDE = 64  # cleanvision measures blur at most this many pixels a side
MEASURE_SIDE = 256  # brightness and entropy at most this many (cleanvision: full size; 2.5 ms at 256 px here)


def native(img: Image.Image) -> Image.Image:
    """`img` (8-bit, transparency composited) in the mode it is measured in: L if it has no colour
    bands, else RGB."""
    return img if img.mode == "L" else img.convert("L" if img.mode in ("1", "LA", "La") else "RGB")


def blur_view(img: Image.Image) -> Image.Image:
    """The image blur is measured on: at most `BLUR_SIDE` a side, resized as cleanvision does."""
    ratio = max(img.width, img.height) / BLUR_SIDE
    if ratio <= 1:
        return img
    return img.resize((max(int(img.width // ratio), 1), max(int(img.height // ratio), 1)))


def measure_image(img: Image.Image, width: int, height: int) -> np.ndarray:
    """`PROPERTIES` of one decoded image whose file was `width` x `height`. Brightness and entropy
    are measured on at most `MEASURE_SIDE` a side (a box reduction: cost bounded per image)."""
    img = native(img)
    factor = -(-max(img.size) // MEASURE_SIDE)
    view = img.reduce(factor) if factor > 1 else img
    pixels, small = np.asarray(view)[None], np.asarray(blur_view(img))[None]
    return measure(pixels, small, np.array([width]), np.array([height]))[0]


def measure(pixels: np.ndarray, small: np.ndarray, width: np.ndarray, height: np.ndarray) -> np.ndarray:
    """`PROPERTIES` (N, 8) float64 of N uint8 images of one shape, (N, H, W) grey or (N, H, W, 3);
    `small`: the same images at most `BLUR_SIDE` a side (`blur_view`), or `pixels` again."""
    n = len(pixels)
    if pixels.ndim == 4 and pixels.shape[-1] == 1:
        pixels, small = pixels[..., 0], small[..., 0]
    colour = pixels.ndim == 4
    f = pixels.reshape(n, -1, 3 if colour else 1).astype(np.float32)
    flat = pixels.reshape(n, -1, 3 if colour else 1)
    hist = _histograms(flat)
    out = np.empty((n, len(PROPERTIES)))
    if colour:
        f = flat.astype(np.float32)
        bright = np.sqrt(0.241 * f[..., 0] ** 2 + 0.691 * f[..., 1] ** 2 + 0.068 * f[..., 2] ** 2) / 255
        out[:, 2], out[:, 3] = np.percentile(bright, [5, 99], axis=1)
        grey = (pixels[..., :1] == pixels).all(axis=(1, 2, 3))
    else:
        out[:, 2], out[:, 3] = _hist_percentile(hist, 5) / 255, _hist_percentile(hist, 99) / 255
        grey = np.ones(n, bool)
    out[:, 0], out[:, 1] = width, height
    out[:, 4] = _entropy(hist) - (np.log2(3) if colour else 0.0)  # per band: a flat colour image has 0
    g = _luma(small) if colour else small
    thin = min(g.shape[1:3]) < 3  # no inside at the size blur is measured at (a strip): not measured
    out[:, 5] = np.nan if thin else _edges(g).reshape(n, -1).std(axis=1, dtype=np.float64)
    out[:, 6] = _histograms(g.reshape(n, -1, 1)).std(axis=1)
    out[:, 7] = grey
    return out


def _histograms(flat: np.ndarray) -> np.ndarray:
    """(N, 256 x bands) histograms of (N, P, bands) uint8, the bands side by side (Pillow's order)."""
    n, _, bands = flat.shape
    offsets = (np.arange(n)[:, None, None] * bands + np.arange(bands)) * 256
    return np.bincount((flat + offsets).ravel(), minlength=n * bands * 256).reshape(n, bands * 256)


def _hist_percentile(hist: np.ndarray, q: float) -> np.ndarray:
    """np.percentile's (linear) `q`th percentile of each image's values, from its (N, 256) histogram."""
    below = hist.cumsum(axis=1)
    rank = q / 100 * (below[:, -1] - 1)
    lo, frac = np.floor(rank), rank - np.floor(rank)
    v_lo = (below <= lo[:, None]).sum(axis=1)  # the value at sorted position lo: the first bin past it
    v_hi = (below <= lo[:, None] + 1).sum(axis=1)
    return v_lo + frac * (v_hi - v_lo)


def _entropy(hist: np.ndarray) -> np.ndarray:
    """Pillow's `Image.entropy`: -sum p log2 p over the joint histogram of the bands."""
    h = hist.astype(np.float64)
    p = h / h.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=1)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Pillow's RGB -> L (ITU-R 601-2 luma, its integer rounding)."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def _edges(grey: np.ndarray) -> np.ndarray:
    """Pillow's FIND_EDGES on (N, H, W) uint8, inside the border: the 3x3 kernel clipped to 0..255.
    Pillow (and so cleanvision) copies the border pixels through unfiltered; at 32 px they are 12% of
    the image and their brightness, not the edges, set the spread: cleanvision calls dark noise
    blurry."""
    x = grey.astype(np.int16)
    rows = x[:, :-2] + x[:, 1:-1] + x[:, 2:]  # the kernel is 9 x centre - the 3x3 box sum (separable)
    box = rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]
    return np.clip(9 * x[:, 1:-1, 1:-1] - box, 0, 255)
