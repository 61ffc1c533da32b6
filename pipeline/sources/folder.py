"""The `imagefolder` source (root/<class>/<file>, or root/{train,val,test}/<class>/<file>) and the
unlabeled folder (`ingest.unlabeled_path`): a walk that follows no folder link, skips sidecars and
names every file it cannot use."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.core.params import Ingest
from pipeline.sources.items import Item, escaped, file_item, image_extensions, required_path, sidecar_item, utf8

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
            elif utf8(rel) is None:
                dirnames.remove(d)
                detail = "folder name is not valid UTF-8; its files are not read"
                out.append((rel, None, Item(path=escaped(rel), reason="non_utf8_name", detail=detail)))
        for f in sorted(filenames):
            rel = os.path.normpath(os.path.join(rel_dir, f)).replace(os.sep, "/")
            out.append((rel, os.path.join(dirpath, f), None))
    return out


def _subdirs(root: Path) -> list[str]:
    """The names of the folders in `root` that the walk enters (not links, UTF-8 names)."""
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.is_symlink() and utf8(d.name))


def _split_layout(root: Path) -> bool:
    """True when the top-level folders of `root` are source splits (train and maybe val, test)."""
    top = set(_subdirs(root))
    return "train" in top and top <= set(SOURCE_SPLITS)


def imagefolder(cfg: Ingest) -> tuple[list[Item], list[str]]:
    """root/<class>/<file>, or root/{train,val,test}/<class>/<file> with that source split."""
    root = required_path(cfg, "an image-folder root (root/<class>/<file>)")
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
        sidecar = sidecar_item(rel, images)
        if sidecar is not None:
            items.append(sidecar)
            continue
        parts = rel.split("/")
        if len(parts) <= depth:
            where = "root/<split>/<class>/" if depth == 2 else "root/<class>/"
            path = rel if utf8(rel) else escaped(rel)
            items.append(Item(path=path, reason="not_in_class_folder", detail=f"files must be in {where}"))
            continue
        label, split = parts[depth - 1], parts[0] if depth == 2 else None
        items.append(file_item(full, rel, real_root, label=label, source_split=split))
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
        unusable = unusable or sidecar_item(rel, images)
        if unusable is not None:
            items.append(Item(path=UNLABELED + unusable.path, reason=unusable.reason, detail=unusable.detail))
        else:
            item = file_item(full, rel, real_root)
            items.append(dataclasses.replace(item, path=UNLABELED + item.path))
    if not items:
        raise PipelineError(f"ingest.unlabeled_path: {root}: no files in it")
    return items
