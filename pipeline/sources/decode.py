"""Decode one image file, or normalise in-memory pixels, to (size, size, channels) uint8.

Conventions: EXIF orientation applied; 16-bit images scaled to 8 bits; transparency
composited onto black; CMYK/palette/1-bit converted; resized (not cropped) to a square
with bilinear filtering. Anything that cannot be used raises `DecodeError` with a reason
code that ingest writes to the quarantine list.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from pipeline.core.executor import ordered_map


class DecodeError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def decode_file(path: str, size: int, channels: int, max_pixels: int, min_side: int) -> np.ndarray:
    """One file's pixels as (size, size, channels) uint8, or `DecodeError`.

    `max_pixels` is the decompression-bomb guard; Pillow's DecompressionBombWarning is left
    to the caller (ingest silences it once for the stage: per file it costs ~10% of decoding
    a small PNG)."""
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
            return _to_array(img, size, channels)
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


def _to_array(img: Image.Image, size: int, channels: int) -> np.ndarray:
    # getexif() also reads an XMP orientation; most images have none, and exif_transpose()
    # costs ~10% of decoding a small PNG even then.
    if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        ImageOps.exif_transpose(img, in_place=True)
    if img.mode.startswith("I") or img.mode == "F":
        img = _to_8bit(img)
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        img = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img.alpha_composite(rgba)
    if img.mode == "LAB":  # Pillow converts LAB (through ImageCms) to RGB, but not to L
        img = img.convert("RGB")
    mode = "L" if channels == 1 else "RGB"
    try:
        img = img if img.mode == mode else img.convert(mode)
    except ValueError as e:
        raise DecodeError("unsupported_mode", f"cannot convert mode {img.mode}: {e}") from None
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8).reshape(size, size, channels)


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
    return _to_array(img, size, channels)


CHUNK = 256  # files per task: per-item work in this process limits the speed


def _decode_chunk(shape: tuple[int, int, int, int, int], files: list[str]) -> list:
    """Worker: each file's normalised pixels (as bytes: cheaper to send back than an array),
    or the reason it is quarantined."""
    size, channels, max_pixels, min_side = shape
    out = []
    with warnings.catch_warnings():
        # images past Pillow's warning size are refused by ingest.max_pixels (or by Pillow)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for file in files:
            try:
                out.append((decode_file(file, size, channels, max_pixels, min_side).tobytes(), None, None))
            except DecodeError as e:
                out.append((None, e.reason, str(e)))
    return out


def decode_items(
    items: list, size: int, channels: int, max_pixels: int, min_side: int, workers: int, executor: str
) -> Iterator[tuple[object, np.ndarray | None, str | None, str | None]]:
    """Each item (a `readers.Item`) with its normalised pixels, or the reason it is quarantined, in input order.

    Decoding files is CPU-bound: chunks of paths go out to `executor`'s workers and bytes come
    back, in input order, so the output depends on neither the executor nor the worker count.
    In-memory pixels are normalised here, which is cheaper than pickling them.
    """
    shape = (size, size, channels)
    files = [it.file for it in items if it.reason is None and it.pixels is None]
    chunks = [files[i : i + CHUNK] for i in range(0, len(files), CHUNK)]
    args = (size, channels, max_pixels, min_side)
    # closing(): the workers end when this generator does, even when its consumer stops early
    with contextlib.closing(ordered_map(_decode_chunk, chunks, args, workers, executor)) as results:
        decoded = (r for chunk in results for r in chunk)
        for item in items:
            if item.reason is not None:
                yield item, None, item.reason, item.detail
            elif item.pixels is not None:
                yield item, normalise(item.pixels, size, channels), None, None
            else:
                raw, reason, detail = next(decoded)
                pixels = None if raw is None else np.frombuffer(raw, np.uint8).reshape(shape)
                yield item, pixels, reason, detail
