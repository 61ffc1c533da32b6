"""Decode one image file, or normalise in-memory pixels, to (size, size, channels) uint8.

Conventions: EXIF orientation applied; 16-bit images scaled to 8 bits; transparency
composited onto a background (`ingest.background`; auto: white under dark content, black under
light, chosen per image from its opaque pixels, so black line art on a transparent background stays
visible); CMYK/palette/1-bit converted; resized (not cropped) to a square
with bilinear filtering. Anything that cannot be used raises `DecodeError` with a reason
code that ingest writes to the quarantine list. With `measure`, the image-quality properties
(`pipeline/quality/image.py`) of the image before the resize come too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from typing import Iterator, NamedTuple

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from pipeline.core.executor import ordered_map
from pipeline.quality import image as quality


class DecodeError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


BACKGROUNDS = {"black": 0, "grey": 128, "white": 255}


def decode_file(
    path: str, size: int, channels: int, max_pixels: int, min_side: int, background: str = "black"
) -> np.ndarray:
    """One file's pixels as (size, size, channels) uint8, or `DecodeError` (`decode`'s pixels)."""
    return decode(path, size, channels, max_pixels, min_side, background)[0]


def decode(
    path: str, size: int, channels: int, max_pixels: int, min_side: int, background: str = "black", measure=False
) -> tuple[np.ndarray, str | None, np.ndarray | None]:
    """(one file's pixels as (size, size, channels) uint8, the background its transparency was
    composited onto or None for an opaque image, with `measure` its `quality.PROPERTIES` at the
    file's own size), or `DecodeError`.

    `max_pixels` is the decompression-bomb guard; Pillow's DecompressionBombWarning is left
    to the caller (ingest silences it once for the stage: per file it costs ~10% of decoding
    a small PNG)."""
    if os.path.splitext(path)[1].lower() in (".svg", ".svgz"):
        raise DecodeError(
            "vector_image",
            "SVG is a vector format Pillow cannot read: render it to PNG first "
            "(rsvg-convert -w 256 FILE.svg -o FILE.png, or inkscape, or cairosvg)",
        )
    try:
        img = Image.open(path)
        with img:
            w, h = img.size
            if w * h > max_pixels:
                raise DecodeError(
                    "too_large", f"{w}x{h} pixels > ingest.max_pixels {max_pixels} (decompression-bomb guard)"
                )
            if min(w, h) < min_side:
                raise DecodeError("too_small", f"{w}x{h} has a side < ingest.min_side {min_side}")
            img.draft("L" if channels == 1 else "RGB", (size, size))  # JPEG: decode at reduced scale
            img.load()
            return _to_array(img, size, channels, background, (w, h) if measure else None)
    except DecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise DecodeError("too_large", str(e)) from None
    except UnidentifiedImageError:
        if os.path.getsize(path) == 0:
            raise DecodeError("empty_file", "file has zero bytes") from None
        raise DecodeError("not_an_image", "Pillow cannot identify this file as an image") from None
    except OSError as e:
        # Pillow says "image file is truncated" for cut image data, and "Truncated File Read"
        # for a file cut inside its header.
        reason = "truncated" if "truncated" in str(e).lower() else "corrupt"
        raise DecodeError(reason, f"decoding failed: {e}") from None
    except (SyntaxError, ValueError, TypeError, IndexError, EOFError) as e:
        raise DecodeError("corrupt", f"decoding failed: {type(e).__name__}: {e}") from None


def _to_array(
    img: Image.Image, size: int, channels: int, background: str = "black", original: tuple[int, int] | None = None
) -> tuple[np.ndarray, str | None, np.ndarray | None]:
    """(pixels, the background under its transparency, with `original` (the file's width and height)
    the image's quality properties before the resize)."""
    # getexif() also reads an XMP orientation; most images have none, and exif_transpose()
    # costs ~10% of decoding a small PNG even then.
    if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        ImageOps.exif_transpose(img, in_place=True)
    if img.mode.startswith("I") or img.mode == "F":
        img = _to_8bit(img)
    used = None
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        img, used = _composite(img.convert("RGBA"), background)
    if img.mode == "LAB":  # Pillow converts LAB (through ImageCms) to RGB, but not to L
        img = img.convert("RGB")
    props = None if original is None else quality.measure_image(img, *original)
    mode = "L" if channels == 1 else "RGB"
    try:
        img = img if img.mode == mode else img.convert(mode)
    except ValueError as e:
        raise DecodeError("unsupported_mode", f"cannot convert mode {img.mode}: {e}") from None
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8).reshape(size, size, channels), used, props


def _composite(rgba: Image.Image, background: str) -> tuple[Image.Image, str | None]:
    """`rgba` over a background: `background`, or for auto white when the opaque pixels are dark
    (mean luminance weighted by alpha below mid-grey), else black. (image, the background's name),
    or (image, None) when every pixel is opaque (no background shows)."""
    alpha = np.asarray(rgba.getchannel("A"), np.float32)
    if alpha.min() == 255:
        return rgba, None
    if background == "auto":
        luminance = np.asarray(rgba.convert("RGB").convert("L"), np.float32)
        weight = alpha.sum()
        dark = weight > 0 and float((luminance * alpha).sum() / weight) < 128
        background = "white" if dark else "black"
    value = BACKGROUNDS[background]
    out = Image.new("RGBA", rgba.size, (value, value, value, 255))
    out.alpha_composite(rgba)
    return out, background


def _to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float images to 8-bit grey, by their mode's range."""
    arr = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        top = 1.0 if arr.size and arr.max() <= 1.0 else 255.0
    elif img.mode.startswith("I;16"):
        top = 65535.0
    else:  # "I": Pillow's mode for 16-bit PNGs on some versions, and for 32-bit TIFFs
        top = 65535.0 if arr.size and arr.max() > 255 else 255.0
    return Image.fromarray(np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8), "L")


def normalise(pixels: np.ndarray, size: int, channels: int) -> np.ndarray:
    """In-memory uint8 pixels (H, W) or (H, W, C) to (size, size, channels)."""
    arr = np.asarray(pixels, dtype=np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.shape[:2] == (size, size) and (arr.ndim == 2) == (channels == 1):
        return np.ascontiguousarray(arr).reshape(size, size, channels)
    img = Image.fromarray(arr, "L" if arr.ndim == 2 else "RGB")
    return _to_array(img, size, channels)[0]


CHUNK = 256  # files per task: per-item work in this process limits the speed


def _decode_chunk(shape: tuple, files: list[str]) -> list:
    """Worker: each file's normalised pixels (as bytes: cheaper to send back than an array), the
    background under its transparency, the SHA-256 of its bytes and its quality properties (or
    None), or the reason it is quarantined."""
    size, channels, max_pixels, min_side, background, measure = shape
    out = []
    with warnings.catch_warnings():
        # images past Pillow's warning size are refused by ingest.max_pixels (or by Pillow)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for file in files:
            try:
                pixels, used, props = decode(file, size, channels, max_pixels, min_side, background, measure)
                with open(file, "rb") as f:  # read again from the page cache: a few % of decoding
                    digest = hashlib.sha256(f.read()).hexdigest()
                out.append((pixels.tobytes(), None, None, used, digest, props))
            except DecodeError as e:
                out.append((None, e.reason, str(e), None, None, None))
    return out


class Decoded(NamedTuple):
    item: object  # the `items.Item`
    pixels: np.ndarray | None  # (size, size, channels) uint8, or None when quarantined ...
    reason: str | None  # ... with this reason
    detail: str | None
    background: str | None = None  # what transparency was composited onto (None: opaque, or pixels given)
    file_sha256: str | None = None  # the file's bytes (None for pixels given)
    quality: np.ndarray | None = None  # `quality.PROPERTIES` of the original (with `measure`)


def decode_items(
    items: list,
    size: int,
    channels: int,
    max_pixels: int,
    min_side: int,
    workers: int,
    executor: str,
    background: str = "black",
    measure: bool = False,
) -> Iterator[Decoded]:
    """Each item (a `items.Item`) decoded, or with the reason it is quarantined, in input order.

    Decoding files is CPU-bound: chunks of paths go out to `executor`'s workers and bytes come
    back, in input order, so the output depends on neither the executor nor the worker count.
    In-memory pixels are normalised here, which is cheaper than pickling them, and with `measure`
    measured in one vectorised pass per shape.
    """
    shape = (size, size, channels)
    files = [it.file for it in items if it.reason is None and it.pixels is None]
    chunks = [files[i : i + CHUNK] for i in range(0, len(files), CHUNK)]
    args = (size, channels, max_pixels, min_side, background, measure)
    given = [it.pixels for it in items if it.reason is None and it.pixels is not None]
    arrays = measure_arrays(given) if measure else None
    next_array = 0
    # closing(): the workers end when this generator does, even when its consumer stops early
    with contextlib.closing(ordered_map(_decode_chunk, chunks, args, workers, executor)) as results:
        decoded = (r for chunk in results for r in chunk)
        for item in items:
            if item.reason is not None:
                yield Decoded(item, None, item.reason, item.detail)
            elif item.pixels is not None:
                props = None if arrays is None else arrays[next_array]
                next_array += 1
                yield Decoded(item, normalise(item.pixels, size, channels), None, None, quality=props)
            else:
                raw, reason, detail, used, digest, props = next(decoded)
                pixels = None if raw is None else np.frombuffer(raw, np.uint8).reshape(shape)
                yield Decoded(item, pixels, reason, detail, used, digest, props)


def measure_arrays(arrays: list[np.ndarray]) -> np.ndarray:
    """`quality.PROPERTIES` (N, 8) of in-memory uint8 images (H, W) or (H, W, C), their own originals:
    those of one shape in one vectorised pass; larger than `quality.BLUR_SIDE`, blur on a resized view."""
    out = np.empty((len(arrays), len(quality.PROPERTIES)))
    by_shape: dict[tuple, list[int]] = {}
    for i, a in enumerate(arrays):
        by_shape.setdefault(np.shape(a), []).append(i)
    for (h, w, *_), rows in by_shape.items():
        batch = np.stack([np.asarray(arrays[i], np.uint8) for i in rows])
        if max(h, w) > quality.BLUR_SIDE:
            small = np.stack([np.asarray(quality.blur_view(Image.fromarray(np.squeeze(b)))) for b in batch])
        else:
            small = batch
        out[rows] = quality.measure(batch, small, np.full(len(rows), w), np.full(len(rows), h))
    return out
