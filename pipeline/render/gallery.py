"""PNG grids of images with captions, for the pictures stages write to `plots/`.

Pillow only (no matplotlib): images are upscaled with nearest-neighbour so pixels stay
visible, and captions use Pillow's built-in font so the output is the same everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_PAD = 4


def _font(size: int = 10) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size font
        return ImageFont.load_default()


def grid(
    images: np.ndarray, captions: list[str] | None = None, cols: int = 8, cell: int = 64, title: str | None = None
) -> Image.Image:
    """Lay out uint8 (N, H, W, C) images, row-major, each scaled to `cell` pixels wide.
    No images: the title and "none found", never a blank tile."""
    images = np.asarray(images, dtype=np.uint8)
    n = len(images)
    if n == 0:
        return empty(title)
    cols = max(1, min(cols, n or 1))
    rows = max(1, -(-n // cols))
    font = _font()
    cap_h, col_w = 0, cell
    if captions:
        lines = max(c.count("\n") + 1 for c in captions)
        cap_h = 12 * lines + 2
        # a column is as wide as its longest caption line, so neighbours' captions never overlap
        col_w = max(cell, *(int(font.getlength(line)) + 2 for c in captions for line in c.split("\n")))
    top = 16 if title else 0
    w, h = cols * (col_w + _PAD) + _PAD, top + rows * (cell + cap_h + _PAD) + _PAD
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((_PAD, 2), title, fill=(0, 0, 0), font=font)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        x, y = _PAD + c * (col_w + _PAD), top + _PAD + r * (cell + cap_h + _PAD)
        pil = Image.fromarray(img[:, :, 0] if img.shape[-1] == 1 else img)
        canvas.paste(pil.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (x, y))
        if captions:
            draw.multiline_text((x, y + cell + 1), captions[i], fill=(0, 0, 0), font=font, spacing=1)
    return canvas


def empty(title: str | None = None) -> Image.Image:
    """A picture that says there was nothing to show."""
    font = _font()
    text = "none found"
    w = max(int(font.getlength(t)) for t in (title or "", text)) + 2 * _PAD
    canvas = Image.new("RGB", (max(w, 120), 40 if title else 24), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((_PAD, 2), title, fill=(0, 0, 0), font=font)
    draw.text((_PAD, 20 if title else 6), text, fill=(110, 110, 110), font=font)
    return canvas


def save(img: Image.Image, path: str | Path) -> None:
    """Write a PNG atomically (same pixels give the same bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
