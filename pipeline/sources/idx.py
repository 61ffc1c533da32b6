"""The `mnist` and `fashion-mnist` sources: IDX files (gzipped or not), train and t10k with their
source split; Fashion-MNIST's default folder is Debian's `dataset-fashion-mnist`."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.params import Ingest
from pipeline.sources.items import Item

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


def read_idx(path: Path, magic: int) -> np.ndarray:
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


def idx_source(name: str, default_dir: str | None, classes: list[str]):
    def source(cfg: Ingest) -> tuple[list[Item], list[str]]:
        if cfg.path is None and default_dir is None:
            raise PipelineError(f"ingest.path: expected the folder of the {name} IDX files, got None")
        directory = Path(cfg.path or default_dir)
        items = []
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images = read_idx(_idx_file(directory, f"{prefix}-images-idx3-ubyte"), 2051)
            labels = read_idx(_idx_file(directory, f"{prefix}-labels-idx1-ubyte"), 2049)
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
