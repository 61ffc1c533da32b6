"""Sources for ingest: each lists its items (a file to decode, or pixels) and its classes.

A source never decodes; it only says what there is and why an entry is unusable
(outside the root, not in a class folder, ...), so that ingest can account for all of it.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import PipelineError
from pipeline.core.params import Ingest
from pipeline.core.registry import Registry

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
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


def digits(cfg: Ingest) -> tuple[list[Item], list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    # The bundled digits are 8x8 counts in 0..16; scale them to the 0..255 range of images.
    pixels = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
    items = [Item(path=f"digits/{i:04d}", label=str(y), pixels=pixels[i]) for i, y in enumerate(d.target)]
    return items, [str(c) for c in range(10)]


def _read_idx(path: Path, magic: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise PipelineError(f"{path}: cannot read IDX file: {e}") from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise PipelineError(f"{path}: not an IDX file with magic number {magic}")
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) - header != int(np.prod(shape)):
        raise PipelineError(f"{path}: header says {shape}, but the data has {len(raw) - header} bytes")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _idx_file(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (directory / name).exists():
            return directory / name
    raise PipelineError(
        f"{directory}: no {stem}[.gz] (IDX files; for Fashion-MNIST: apt-get install dataset-fashion-mnist)"
    )


def _idx(name: str, default_dir: str | None, classes: list[str]):
    def source(cfg: Ingest) -> tuple[list[Item], list[str]]:
        if cfg.path is None and default_dir is None:
            raise PipelineError(f"ingest.path: expected the folder of the {name} IDX files, got None")
        directory = Path(cfg.path or default_dir)
        items = []
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images = _read_idx(_idx_file(directory, f"{prefix}-images-idx3-ubyte"), 2051)
            labels = _read_idx(_idx_file(directory, f"{prefix}-labels-idx1-ubyte"), 2049)
            if len(images) != len(labels):
                raise PipelineError(f"{directory}: {prefix} has {len(images)} images but {len(labels)} labels")
            for i, (img, y) in enumerate(zip(images, labels)):
                label = classes[y] if y < len(classes) else None
                reason = None if label else "unknown_label"
                items.append(
                    Item(
                        path=f"{name}/{prefix}/{i:05d}",
                        label=label,
                        source_split=split,
                        pixels=img,
                        reason=reason,
                        detail=f"label index {y} out of range" if reason else None,
                    )
                )
        return items, classes

    return source


def _outside(real: str, real_root: str) -> bool:
    return os.path.commonpath([real, real_root]) != real_root


def _utf8(rel: str) -> str | None:
    try:
        rel.encode("utf-8")
        return rel
    except UnicodeEncodeError:
        return None


def _escaped(rel: str) -> str:
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


def _file_item(full: str, rel: str, real_root: str, **fields) -> Item:
    """An item for a file that exists in the listing, checked for links and file type.

    Only a link is resolved (resolving every path costs as much as decoding a small PNG):
    the folder walk never enters linked folders, and `csv` checks its paths beforehand.
    """
    if _utf8(rel) is None:
        return Item(path=_escaped(rel), reason="non_utf8_name", detail="file name is not valid UTF-8; rename the file")
    try:
        mode = os.lstat(full).st_mode
        if stat.S_ISLNK(mode):
            if _outside(os.path.realpath(full), real_root):
                return Item(path=rel, reason="outside_root", detail="resolves outside the source root")
            mode = os.stat(full).st_mode
    except OSError:
        return Item(path=rel, reason="missing_file", detail="no such file (or a broken link)")
    if not stat.S_ISREG(mode):
        return Item(path=rel, reason="not_a_file", detail="not a regular file")
    return Item(path=rel, file=full, **fields)


def _required_dir(cfg: Ingest, what: str) -> Path:
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


def _sidecar(rel: str, images: frozenset[str]) -> Item | None:
    """A skipped item for a file whose extension is no image format, else None."""
    ext = os.path.splitext(rel)[1].lower()
    if ext in images:
        return None
    return Item(path=rel if _utf8(rel) else _escaped(rel), reason=SIDECAR, detail=ext or "(no extension)")


SOURCE_SPLITS = ("train", "val", "test")  # an image folder laid out as root/<split>/<class>/ keeps them
UNLABELED = "unlabeled/"  # path prefix of the items from ingest.unlabeled_path


def _walk(root: Path) -> list[tuple[str, str | None, Item | None]]:
    """Every file under `root` as (posix path relative to root, full path, None), plus an unusable
    item (rel, None, item) for each linked or non-UTF-8 folder, whose files are not read."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):  # does not follow directory links
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for d in list(dirnames):
            full, rel = os.path.join(dirpath, d), os.path.normpath(os.path.join(rel_dir, d))
            if os.path.islink(full):
                dirnames.remove(d)
                detail = "directory symlinks are not followed"
                out.append((rel, None, Item(path=rel, reason="linked_dir", detail=detail)))
            elif _utf8(rel) is None:
                dirnames.remove(d)
                detail = "folder name is not valid UTF-8; its files are not read"
                out.append((rel, None, Item(path=_escaped(rel), reason="non_utf8_name", detail=detail)))
        for f in sorted(filenames):
            rel = os.path.normpath(os.path.join(rel_dir, f)).replace(os.sep, "/")
            out.append((rel, os.path.join(dirpath, f), None))
    return out


def _subdirs(root: Path) -> list[str]:
    """The names of the folders in `root` that the walk enters (not links, UTF-8 names)."""
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.is_symlink() and _utf8(d.name))


def _split_layout(root: Path) -> bool:
    """True when the top-level folders of `root` are source splits (train and maybe val, test)."""
    top = set(_subdirs(root))
    return "train" in top and top <= set(SOURCE_SPLITS)


def imagefolder(cfg: Ingest) -> tuple[list[Item], list[str]]:
    """root/<class>/<file>, or root/{train,val,test}/<class>/<file> with that source split."""
    root = _required_dir(cfg, "an image-folder root (root/<class>/<file>)")
    if not root.is_dir():
        raise PipelineError(f"ingest.path: {root}: not a directory (source imagefolder)")
    real_root = os.path.realpath(root)
    depth = 2 if _split_layout(root) else 1  # path components before the file: [split/]class
    tops = [root / d for d in _subdirs(root)] if depth == 2 else [root]
    classes = sorted({c for top in tops for c in _subdirs(top)})  # empty class folders included
    items, images = [], image_extensions()
    for rel, full, unusable in _walk(root):
        if unusable is not None:
            items.append(unusable)
            continue
        sidecar = _sidecar(rel, images)
        if sidecar is not None:
            items.append(sidecar)
            continue
        parts = rel.split("/")
        if len(parts) <= depth:
            where = "root/<split>/<class>/" if depth == 2 else "root/<class>/"
            path = rel if _utf8(rel) else _escaped(rel)
            items.append(Item(path=path, reason="not_in_class_folder", detail=f"files must be in {where}"))
            continue
        label, split = parts[depth - 1], parts[0] if depth == 2 else None
        items.append(_file_item(full, rel, real_root, label=label, source_split=split))
    return items, classes


def unlabeled(path: str) -> list[Item]:
    """Every file under the folder `path` (any depth) as an unlabeled item (`ingest.unlabeled_path`)."""
    root = Path(path)
    if not root.is_dir():
        what = "not a directory" if root.exists() else "no such directory"
        raise PipelineError(f"ingest.unlabeled_path: {root}: {what}")
    real_root = os.path.realpath(root)
    items, images = [], image_extensions()
    for rel, full, unusable in _walk(root):
        unusable = unusable or _sidecar(rel, images)
        if unusable is not None:
            items.append(Item(path=UNLABELED + unusable.path, reason=unusable.reason, detail=unusable.detail))
        else:
            item = _file_item(full, rel, real_root)
            items.append(dataclasses.replace(item, path=UNLABELED + item.path))
    if not items:
        raise PipelineError(f"ingest.unlabeled_path: {root}: no files in it")
    return items


def csv(cfg: Ingest) -> tuple[list[Item], list[str]]:
    """A table with path,label[,group]; an empty label cell means the image is unlabeled."""
    table = _required_dir(cfg, "a CSV file with columns path,label[,group]")
    try:
        df = pd.read_csv(table, dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise PipelineError(f"{table}: cannot read as CSV: {e}".splitlines()[0]) from None
    missing = {"path", "label"} - set(df.columns)
    if missing:
        raise PipelineError(f"{table}: expected columns path,label[,group], got {','.join(df.columns)}")
    root = table.parent
    real_root = os.path.realpath(root)
    items = []
    for n, row in enumerate(df.itertuples(index=False), start=2):  # line 1 is the header
        rel = os.path.normpath(row.path.strip()).replace(os.sep, "/") if row.path.strip() else ""
        group = getattr(row, "group", "") or None
        if not rel:
            items.append(Item(path=f"<line {n}>", reason="missing_path", detail=f"line {n}: empty path"))
        elif os.path.isabs(rel) or _outside(os.path.realpath(root / rel), real_root):
            items.append(
                Item(path=rel, reason="outside_root", detail=f"line {n}: path resolves outside the CSV's folder")
            )
        else:
            label = row.label.strip() or None
            items.append(_file_item(str(root / rel), rel, real_root, label=label, group=group))
    return items, sorted({it.label for it in items if it.label})


UNSURE = "unsure"  # the Label Studio answer that is no label (pipeline.labelstudio.config's)
LOCAL_FILES, UPLOADS = "/data/local-files/?d=", "/data/"  # how Label Studio serves images


def labelstudio(cfg: Ingest) -> tuple[list[Item], list[str]]:
    """A Label Studio JSON export (Export -> JSON): each task's image (`data.image`, or its only
    value), labeled with the majority of its answers (skips, "unsure" and empty answers do not
    count; ties go to the answer given first); a task without one is unlabeled. An image reference
    is a path under `ingest.document_root` (default: the export's folder), as Label Studio's local
    files (`/data/local-files/?d=<path>`), an upload (`/data/upload/...`: set document_root to
    Label Studio's media folder) or a plain relative path; a URL cannot be fetched offline."""
    from collections import Counter
    from urllib.parse import unquote

    export = _required_dir(cfg, "a Label Studio JSON export (a .json file)")
    try:
        tasks = json.loads(export.read_text())
    except (OSError, ValueError) as e:
        raise PipelineError(f"{export}: cannot read as JSON: {e}".splitlines()[0]) from None
    if not isinstance(tasks, list):
        got = type(tasks).__name__
        raise PipelineError(f"{export}: expected a list of tasks (Label Studio's JSON export), got a {got}")
    root = Path(cfg.document_root) if cfg.document_root else export.parent
    real_root = os.path.realpath(root)
    items = []
    for n, task in enumerate(tasks):
        data = task.get("data") if isinstance(task, dict) else None
        where = f"task {task.get('id', n) if isinstance(task, dict) else n}"
        values = [v for v in (data or {}).values() if isinstance(v, str)]
        ref = (data or {}).get("image", values[0] if len(values) == 1 else None)
        if not isinstance(ref, str) or not ref:
            items.append(Item(path=f"<{where}>", reason="missing_path", detail=f"{where}: no data.image"))
            continue
        if ref.startswith(("http://", "https://", "s3://", "gs://")):
            items.append(Item(path=ref, reason="remote_url", detail=f"{where}: a URL; export with local files"))
            continue
        rel = unquote(ref.removeprefix(LOCAL_FILES)) if ref.startswith(LOCAL_FILES) else ref.removeprefix(UPLOADS)
        rel = os.path.normpath(rel.lstrip("/")).replace(os.sep, "/")
        if _outside(os.path.realpath(root / rel), real_root):
            items.append(Item(path=rel, reason="outside_root", detail=f"{where}: resolves outside {root}"))
            continue
        votes = Counter(
            choice[0]
            for a in task.get("annotations") or []
            if not a.get("was_cancelled")
            for r in a.get("result") or []
            if (choice := (r.get("value") or {}).get("choices")) and choice[0] != UNSURE
        )
        label = votes.most_common(1)[0][0] if votes else None  # most_common keeps first-seen order on ties
        group = data.get("group") if isinstance(data.get("group"), str) else None
        items.append(_file_item(str(root / rel), rel, real_root, label=label, group=group))
    return items, sorted({it.label for it in items if it.label})


SOURCES = Registry(
    "source (ingest.source)",
    [
        ("digits", digits),
        ("fashion-mnist", _idx("fashion-mnist", FASHION_MNIST_DIR, FASHION_MNIST_CLASSES)),
        ("mnist", _idx("mnist", None, [str(c) for c in range(10)])),
        ("imagefolder", imagefolder),
        ("csv", csv),
        ("labelstudio", labelstudio),
    ],
)
