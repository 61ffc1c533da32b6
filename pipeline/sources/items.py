"""What every ingest source shares: the `Item` a source lists (a file to decode, or pixels, or an
unusable entry with its reason), the checks on a listed file (links, names, file type), which files
are images at all (the rest are sidecars, skipped), and `auto_shape` (ingest's `auto` size and channels).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.params import Ingest

AUTO_MAX_SIZE = 64  # image_size auto never exceeds this: the small models train on CPU
AUTO_PROBE = 256  # images looked at to choose image_size / channels


@dataclass(frozen=True)
class Item:
    path: str  # source-relative path, or a stable reference such as digits/0007
    label: str | None = None
    group: str | None = None
    source_split: str | None = None  # the source's own train/test assignment, if any
    file: str | None = None  # a file to decode ...
    pixels: np.ndarray | None = None  # ... or pixels already in memory
    reason: str | None = None  # set when the item is known to be unusable
    detail: str | None = None


def _shape(item: Item) -> tuple[int, int, bool] | None:
    """(width, height, has colour) of an item, or None where it cannot be read."""
    if item.pixels is not None:
        arr = np.asarray(item.pixels)
        return arr.shape[1], arr.shape[0], _colourful(arr)
    from PIL import Image

    try:
        with Image.open(item.file) as img:
            w, h = img.size
            if img.mode in ("1", "L", "LA", "I", "I;16", "F"):
                return w, h, False
            img.draft("RGB", (32, 32))
            img.thumbnail((32, 32))
            return w, h, _colourful(np.asarray(img.convert("RGB")))
    except Exception:  # noqa: BLE001 - unreadable files are ingest's to quarantine, not ours
        return None


def _colourful(arr: np.ndarray) -> bool:
    """True when the channels differ visibly (an RGB file of grey pixels is grey)."""
    if arr.ndim < 3 or arr.shape[2] < 3:
        return False
    rgb = arr[..., :3].astype(np.int16)
    return float(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean()) > 2.0


def auto_shape(items: list[Item], cfg: Ingest) -> tuple[int, int, str]:
    """(image_size, channels, why) for `cfg`, choosing what is `auto` from up to AUTO_PROBE
    usable items spread evenly over the list: channels 3 when most have colour; size the
    median shorter side rounded down to a multiple of 4 (the models pool twice, the VAE halves
    twice), from 8 to AUTO_MAX_SIZE."""
    usable = [it for it in items if it.reason is None]
    probe = [usable[i] for i in np.unique(np.linspace(0, len(usable) - 1, AUTO_PROBE).astype(int))] if usable else []
    shapes = [s for s in map(_shape, probe) if s is not None]
    why = []
    size, channels = cfg.image_size, cfg.channels
    if size == "auto":
        side = int(np.median([min(w, h) for w, h, _ in shapes])) if shapes else AUTO_MAX_SIZE
        size = int(np.clip(side // 4 * 4, 8, AUTO_MAX_SIZE))
        note = f", at most {AUTO_MAX_SIZE}" if side > AUTO_MAX_SIZE else ""
        if not note and size != side:
            note = ", a multiple of 4" if size < side else ", at least 8"
        why.append(f"image_size {size} (median shorter side {side} px{note})")
    if channels == "auto":
        colour = sum(c for _, _, c in shapes)
        channels = 3 if colour * 2 > len(shapes) else 1
        why.append(f"channels {channels} ({colour} of {len(shapes)} sampled images have colour)")
    return size, channels, "; ".join(why)


def outside(real: str, real_root: str) -> bool:
    return os.path.commonpath([real, real_root]) != real_root


def utf8(rel: str) -> str | None:
    try:
        rel.encode("utf-8")
        return rel
    except UnicodeEncodeError:
        return None


def escaped(rel: str) -> str:
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


def file_item(full: str, rel: str, real_root: str, **fields) -> Item:
    """An item for a file that exists in the listing, checked for links and file type.

    Only a link is resolved (resolving every path costs as much as decoding a small PNG):
    the folder walk never enters linked folders, and `csv` checks its paths beforehand.
    """
    if utf8(rel) is None:
        return Item(path=escaped(rel), reason="non_utf8_name", detail="file name is not valid UTF-8; rename the file")
    try:
        mode = os.lstat(full).st_mode
        if stat.S_ISLNK(mode):
            if outside(os.path.realpath(full), real_root):
                return Item(path=rel, reason="outside_root", detail="resolves outside the source root")
            mode = os.stat(full).st_mode
    except OSError:
        return Item(path=rel, reason="missing_file", detail="no such file (or a broken link)")
    if not stat.S_ISREG(mode):
        return Item(path=rel, reason="not_a_file", detail="not a regular file")
    return Item(path=rel, file=full, **fields)


def required_path(cfg: Ingest, what: str) -> Path:
    if cfg.path is None:
        raise PipelineError(f"ingest.path: expected {what}, got None")
    path = Path(cfg.path)
    if not path.exists():
        raise PipelineError(f"ingest.path: {path}: no such file or directory")
    return path


SIDECAR = "sidecar"  # the reason of a file a folder walk skips: not an image format (ingest counts, never quarantines)

VECTOR = (".svg", ".svgz")  # image formats Pillow cannot read: quarantined with a way to convert them


def image_extensions() -> frozenset[str]:
    """The file extensions a folder walk takes for images: Pillow's formats and the vector ones
    (which decode quarantines with a way to convert them). Anything else beside the images
    (descriptions, sounds, metadata: `.txt`, `.ogg`, `.json`, `.dat`) is a sidecar."""
    from PIL import Image

    Image.init()
    return frozenset(Image.registered_extensions()) | frozenset(VECTOR)


def sidecar_item(rel: str, images: frozenset[str]) -> Item | None:
    """A skipped item for a file whose extension is no image format, else None."""
    ext = os.path.splitext(rel)[1].lower()
    if ext in images:
        return None
    return Item(path=rel if utf8(rel) else escaped(rel), reason=SIDECAR, detail=ext or "(no extension)")
