"""Manifests and image stores: the only module that knows the on-disk format.

A dataset is a manifest (one Parquet table, one row per sample) plus image stores:
uint8 arrays of shape (N, H, W, C) saved as `.npy` shards, read back memory-mapped.
On disk the `store` column is relative to the manifest's folder, so a data folder can
move; in memory it is a usable path (relative to the working directory or absolute).
The class list travels in the Parquet metadata so `label_id` keeps its meaning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.errors import PipelineError

MANIFEST = "manifest.parquet"
FORMAT_VERSION = 1
_META_KEY = b"pipeline"


def sample_id(*parts: object) -> str:
    """A stable id from what identifies a sample (source path, or parent id and copy)."""
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:16]


def sample_seed(seed: int, sid: str) -> int:
    """Per-sample randomness from (base.seed, sample_id): adding a sample reshuffles no other."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{sid}".encode()).digest()[:8], "little")


def pixel_hash(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()).hexdigest()


def write_manifest(df: pd.DataFrame, path: str | Path, classes: list[str], final_dir: str | Path | None = None) -> None:
    """Write `df` atomically; `final_dir` is where the manifest will live if `path` is staged."""
    path = Path(path)
    base = Path(final_dir) if final_dir is not None else path.parent
    df = df.reset_index(drop=True).copy()
    if "store" in df:
        rel = {s: os.path.relpath(s, base) for s in pd.unique(df["store"])}  # few shards, many rows
        df["store"] = [rel[s] for s in df["store"]]
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[_META_KEY] = json.dumps({"version": FORMAT_VERSION, "classes": list(classes)}).encode()
    table = table.replace_schema_metadata(meta)
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_manifest(path: str | Path) -> tuple[pd.DataFrame, list[str]]:
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.exists():
        raise PipelineError(f"{path}: no manifest (has the stage that writes it run?)")
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
    if meta.get("version") != FORMAT_VERSION:
        raise PipelineError(
            f"{path}: manifest format version {meta.get('version')!r}, "
            f"expected {FORMAT_VERSION}; re-run the stage that wrote it"
        )
    df = table.to_pandas()
    if "store" in df:
        df["store"] = [os.path.normpath(os.path.join(path.parent, s)) for s in df["store"]]
    return df, list(meta["classes"])


def load_pixels(df: pd.DataFrame) -> np.ndarray:
    """The pixels of `df`'s rows, in row order, as one (N, H, W, C) uint8 array."""
    if len(df) == 0:
        return np.zeros((0, 1, 1, 1), np.uint8)
    out = None
    stores = df["store"].to_numpy()
    rows = df["row"].to_numpy()
    for store in pd.unique(stores):
        arr = np.load(store, mmap_mode="r")
        mask = stores == store
        if out is None:
            out = np.empty((len(df), *arr.shape[1:]), np.uint8)
        out[mask] = arr[rows[mask]]
    return out


class ShardWriter:
    """Appends images to fixed-size `.npy` shards in `directory` (bounded memory)."""

    def __init__(self, directory: str | Path, final_dir: str | Path | None = None, shard_size: int = 8192):
        self.directory = Path(directory)
        self.final_dir = Path(final_dir) if final_dir is not None else self.directory
        self.shard_size = shard_size
        self._buf: list[np.ndarray] = []
        self._shard = 0

    def add(self, pixels: np.ndarray) -> tuple[str, int]:
        """Queue one (H, W, C) image; return its (store, row) as the manifest will name them."""
        if not self._buf:  # a new shard; naming it once per shard, not per image, is faster
            self._store = str(self.final_dir / f"{self._shard:05d}.npy")
        store, row = self._store, len(self._buf)
        self._buf.append(pixels)
        if len(self._buf) == self.shard_size:
            self._flush()
        return store, row

    def _flush(self) -> None:
        if self._buf:
            self.directory.mkdir(parents=True, exist_ok=True)  # on the first image: none, no folder
            np.save(self.directory / f"{self._shard:05d}.npy", np.stack(self._buf))
            self._buf = []
            self._shard += 1

    def close(self) -> None:
        self._flush()


def store_pixels(rows: pd.DataFrame, pixels: np.ndarray, directory: str | Path, final_dir: str | Path) -> pd.DataFrame:
    """Write `pixels` (one image per row of `rows`, in order) as shards in `directory`; `rows`
    with their `store` (named under `final_dir`, where the shards will live) and `row`."""
    if not len(rows):
        return rows
    writer = ShardWriter(directory, final_dir)
    where = [writer.add(px) for px in pixels]
    writer.close()
    return rows.assign(store=[s for s, _ in where], row=np.array([r for _, r in where], np.int64))


@contextlib.contextmanager
def staged_dir(out: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces `out` only if the block succeeds.

    A killed stage leaves its old outputs or none, never half of new ones.
    """
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    old = out.with_name(f".{out.name}.old")
    for p in (tmp, old):
        if p.exists():
            shutil.rmtree(p)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | Path, obj: object) -> None:
    """Atomic, deterministic JSON (sorted keys) for metrics and small reports."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_csv(path: str | Path, df: pd.DataFrame) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False, lineterminator="\n")
    os.replace(tmp, path)
