"""Tiny learnable image data for the training-core tests, as arrays and as manifests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipeline import __main__ as cli
from pipeline.core import dataset
from pipeline.quality import image as quality
from pipeline.sources.decode import measure_arrays

RANDAUGMENT = str(Path(__file__).resolve().parents[1] / "augment_policies" / "randaugment.yaml")  # train's --policy


def patterns(n: int = 200, size: int = 8, channels: int = 1, k: int = 4, seed: int = 0):
    """uint8 NHWC images whose class is the quadrant holding a bright square, plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    rng.shuffle(y)
    x = rng.integers(0, 90, (n, size, size, channels))
    h = size // 2
    for i, c in enumerate(y):
        r, q = divmod(int(c) % 4, 2)
        x[i, r * h : (r + 1) * h, q * h : (q + 1) * h] += 140
    return x.clip(0, 255).astype(np.uint8), y.astype(np.int64)


def write_split(
    root: Path, n: int = 240, k: int = 4, size: int = 8, seed: int = 0, fractions=(0.6, 0.2, 0.2)
) -> tuple[Path, Path, list[str]]:
    """A split manifest and an assembled training set (its train rows, weight 1) under `root`."""
    x, y = patterns(n, size, 1, k, seed)
    return write_arrays(root, x, y, [f"c{i}" for i in range(k)], fractions)


def digits_split(root: Path, fractions=(0.7, 0.1, 0.2)) -> tuple[Path, Path, list[str]]:
    """`write_split` of scikit-learn's 1,797 8x8 digits (bundled, offline), in their order."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images * 255 / 16).round().astype(np.uint8)[..., None]
    return write_arrays(root, x, d.target, [str(c) for c in range(10)], fractions)


def write_arrays(
    root: Path, x: np.ndarray, y: np.ndarray, classes: list[str], fractions
) -> tuple[Path, Path, list[str]]:
    n = len(x)
    writer = dataset.ShardWriter(root / "split" / "images", shard_size=100)
    cut = np.cumsum(np.asarray(fractions) * n).astype(int)
    rows = []
    for i, (px, label) in enumerate(zip(x, y)):
        store, row = writer.add(px)
        split = "train" if i < cut[0] else "val" if i < cut[1] else "test"
        rows.append(
            {
                "sample_id": f"s{i:04d}",
                "path": f"tiny/{i:04d}",
                "label": classes[label],
                "label_id": int(label),
                "group": None,
                "split": split,
                "origin": "real",
                "parent_id": None,
                "pixel_sha256": dataset.pixel_hash(px),
                "store": store,
                "row": row,
            }
        )
    writer.close()
    df = pd.DataFrame(rows)
    df[list(quality.COLUMNS)] = measure_arrays(list(x))  # what ingest measures
    dataset.write_manifest(df, root / "split" / dataset.MANIFEST, classes)
    train = df[df["split"] == "train"].assign(weight=1.0)
    dataset.write_manifest(train, root / "assemble" / dataset.MANIFEST, classes)
    return root / "split", root / "assemble", classes


NOISE = {"rate": 0.2, "kind": "symmetric", "seed": 3}  # clean.inject_noise for the oof-based tests
TINY_TRAIN = {"epochs": 4, "batch_size": 32, "width": 8, "lr": 0.01, "threads": 1}
TINY_OOF = {"folds": 3, "epochs": 4, "min_steps": 0, "tta": False, "shift": 0.0}


def with_clusters(split: "Path", size: int = 2) -> None:
    """Give the split manifest `cluster_id`s of `size` consecutive samples of one split."""
    df, classes = dataset.read_manifest(split)
    df["cluster_id"] = [f"k{i // size}" for i in range(len(df))]
    dataset.write_manifest(df, split / dataset.MANIFEST, classes)


def run_oof(tmp_path, n=240, noise=None, **oof_cfg):
    split, _, classes = write_split(tmp_path / "data", n=n)
    with_clusters(split)
    cfg = {"train": TINY_TRAIN, "oof": {**TINY_OOF, **oof_cfg}}
    if noise:
        cfg["clean"] = {"inject_noise": noise}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "oof"
    assert (
        cli.main(
            [
                "oof",
                "--quiet",
                "--params",
                str(tmp_path / "params.yaml"),
                "--split",
                str(split),
                "--embed",
                "none",  # read only by oof.model: probe
                "--labels",
                str(tmp_path / "patches.csv"),  # none: an empty patch
                "--out",
                str(out),
                "--metrics",
                str(tmp_path / "oof.json"),
            ]
        )
        == 0
    )
    return split, out, json.loads((tmp_path / "oof.json").read_text())
