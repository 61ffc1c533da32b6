"""Offline augmentation throughput: the augment stage's kernel path against a bare albumentations
loop applying equivalent ops to the same images, and 2 worker processes against 1, in one run.

The images are the Fashion-MNIST train split (60,000 28x28 grey images; IDX files from
`dataset-fashion-mnist`). The candidate is `pipeline.stages.augment.augment` with the shipped
RandAugment default (N=2, M=9): per-sample seeding, drawing, applying, hashing and the `ops`
record, reading its parents from a memory-mapped store, exactly as the stage runs it. The
baseline is `A.Compose([A.SomeOf([...14 ops...], n=2, replace=True)])` called image by image,
with albumentations' nearest equivalents of the 14 ops at the same strength (it has no PIL
Sharpness or Color; `Sharpen` and `ColorJitter` stand in). Each time is the best of
`--repeats` runs, so that other load on a shared machine inflates it less.

Usage: python bench/bench_augment.py [--images DIR] [--limit N] [--repeats R]
Pass: ours >= 0.8x the baseline's speed; 2 workers >= 1.6x faster than 1.
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("PIPELINE_QUIET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.augment import policy as pol  # noqa: E402
from pipeline.stages import augment as stage

ROOT = Path(__file__).resolve().parents[1]


def read_idx_images(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    n, h, w = (int.from_bytes(data[i : i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(data, np.uint8, offset=16).reshape(n, h, w, 1).copy()


def baseline_pipeline(m: float) -> A.Compose:
    """albumentations' nearest equivalents of RandAugment's 14 ops at magnitude m (of 10)."""
    shear = math.degrees(math.atan(0.3 * m / 10))
    shift, angle, factor = 150 / 331 * m / 10, 30 * m / 10, 0.9 * m / 10
    geo = dict(interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT, fill=0, p=1)
    ops = [
        A.NoOp(p=1),
        A.AutoContrast(p=1),
        A.Equalize(mode="pil", p=1),
        A.Affine(rotate=(-angle, angle), **geo),
        A.Solarize(threshold_range=((256 - 256 * m / 10) / 255,) * 2, p=1),
        A.ColorJitter(brightness=0, contrast=0, saturation=(1 - factor, 1 + factor), hue=0, p=1),
        A.Posterize(num_bits=(round(8 - 4 * m / 10),) * 2, p=1),
        A.ColorJitter(brightness=0, contrast=(1 - factor, 1 + factor), saturation=0, hue=0, p=1),
        A.ColorJitter(brightness=(1 - factor, 1 + factor), contrast=0, saturation=0, hue=0, p=1),
        A.Sharpen(alpha=(factor, factor), lightness=(1, 1), p=1),
        A.Affine(shear={"x": (-shear, shear), "y": (0, 0)}, **geo),
        A.Affine(shear={"x": (0, 0), "y": (-shear, shear)}, **geo),
        A.Affine(translate_percent={"x": (-shift, shift), "y": (0, 0)}, **geo),
        A.Affine(translate_percent={"x": (0, 0), "y": (-shift, shift)}, **geo),
    ]
    return A.Compose([A.SomeOf(ops, n=2, replace=True, p=1)], seed=0)


def run_baseline(images: np.ndarray, m: float) -> float:
    t = baseline_pipeline(m)
    out = np.empty_like(images)
    start = time.perf_counter()
    for i, img in enumerate(images):
        out[i] = t(image=img)["image"]
    return time.perf_counter() - start


def run_ours(job: stage.Job, workers: int) -> float:
    start = time.perf_counter()
    n = sum(len(chunk[1]) for chunk in stage.augment(job, workers))
    assert n == len(job.parents)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default="/usr/share/datasets/fashion-mnist", help="IDX folder (default: %(default)s)")
    ap.add_argument("--limit", type=int, default=60000, help="first N train images (default: all %(default)s)")
    ap.add_argument("--repeats", type=int, default=2, help="best of R runs each (default: %(default)s)")
    args = ap.parse_args()

    load0 = os.getloadavg()[0]
    images = read_idx_images(Path(args.images) / "train-images-idx3-ubyte.gz")[: args.limit]
    policy = pol.load(ROOT / "augment_policies/randaugment.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "00000.npy"
        np.save(store, images)
        df = pd.DataFrame({"store": str(store), "row": np.arange(len(images))})
        job = stage.Job(
            stage.Source(df), tuple(f"fmnist/train/{i:05d}" for i in range(len(images))), policy, copies=1, seed=0
        )
        times = {"baseline": [], "ours_1": [], "ours_2": []}
        for _ in range(args.repeats):  # interleaved, so slow phases of a shared machine hit all three
            times["baseline"].append(run_baseline(images, policy.magnitude))
            times["ours_1"].append(run_ours(job, 1))
            times["ours_2"].append(run_ours(job, 2))
    best = {k: min(v) for k, v in times.items()}
    n = len(images)
    print(
        f"Fashion-MNIST train, {n} images {images.shape[1:]}, RandAugment N={policy.num_ops} M={policy.magnitude}, "
        f"best of {args.repeats}, {len(os.sched_getaffinity(0))} CPUs, load average {load0:.1f} -> "
        f"{os.getloadavg()[0]:.1f} (other processes compete for the CPUs when it exceeds their number)"
    )
    for k, label in [
        ("baseline", "bare albumentations loop"),
        ("ours_1", "augment stage, 1 worker"),
        ("ours_2", "augment stage, 2 workers"),
    ]:
        print(
            f"  {label:26s} {best[k]:7.2f} s  {n / best[k]:9.0f} img/s   (runs: "
            + ", ".join(f"{t:.2f}" for t in times[k])
            + ")"
        )
    speed = best["baseline"] / best["ours_1"]
    scale = best["ours_1"] / best["ours_2"]
    verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    print(f"ours vs baseline (1 worker): {speed:.2f}x the speed   (target >= 0.8x)  {verdict(speed >= 0.8)}")
    print(f"2 workers vs 1:              {scale:.2f}x faster      (target >= 1.6x)  {verdict(scale >= 1.6)}")


if __name__ == "__main__":
    main()
