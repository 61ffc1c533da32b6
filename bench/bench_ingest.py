"""Ingest speed against the bare Pillow decode loop, on the same image folder.

Requirement: ingesting an image folder runs at >= 0.7x the speed of

    for f in files:
        with Image.open(f) as im:
            im.load()
            np.asarray(im)

in the same process. Builds N 28x28 greyscale PNGs (Fashion-MNIST if installed, else
scikit-learn digits upscaled) in a temporary folder, then alternates the bare loop, ingest
with the default workers (all cores) and ingest with workers=1, `--repeats` times each,
and reports the best time of each.

Usage: .venv/bin/python bench/bench_ingest.py [--n 5000] [--repeats 3] [--check]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REQUIRED_RATIO = 0.7


def sample_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n 28x28 uint8 images and their labels."""
    from pipeline.sources import readers as sources

    if os.path.isdir(sources.FASHION_MNIST_DIR):
        items, classes = sources.SOURCES["fashion-mnist"](sources.Ingest(source="fashion-mnist"))
        items = items[:n]
        labels = [classes.index(it.label) for it in items]  # class names hold "/"
        return np.stack([it.pixels for it in items]), np.array(labels)
    from sklearn.datasets import load_digits

    d = load_digits()
    small = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
    idx = np.arange(n) % len(small)
    big = [np.asarray(Image.fromarray(small[i]).resize((28, 28), Image.Resampling.BILINEAR)) for i in idx]
    return np.stack(big), d.target[idx]


def build_folder(root: Path, n: int) -> list[str]:
    images, labels = sample_images(n)
    files = []
    for i, (img, y) in enumerate(zip(images, labels)):
        path = root / f"class_{y}" / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)
        files.append(str(path))
    return sorted(files)


def bare_loop(files: list[str]) -> None:
    for f in files:
        with Image.open(f) as im:
            im.load()
            np.asarray(im)


def ingest(root: Path, tmp: Path, workers: int) -> dict:
    from pipeline.__main__ import main

    params = tmp / f"params-{workers}.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "ingest": {
                    "source": "imagefolder",
                    "path": str(root),
                    "image_size": 28,
                    "channels": 1,
                    "workers": workers,
                }
            }
        )
    )
    metrics = tmp / f"metrics-{workers}.json"
    rc = main(
        ["ingest", "--params", str(params), "--out", str(tmp / f"out-{workers}"), "--metrics", str(metrics), "--quiet"]
    )
    if rc != 0:
        sys.exit(f"bench: ingest failed with exit code {rc}")
    return json.loads(metrics.read_text())


def timed(fn) -> tuple[float, float]:
    """Wall seconds, and CPU seconds of this process and its (reaped) workers."""
    t0, c0 = time.perf_counter(), os.times()
    fn()
    t1, c1 = time.perf_counter(), os.times()
    cpu = sum(c1[:4]) - sum(c0[:4])  # user, system, children's user, children's system
    return t1 - t0, cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5000, help="images (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each (default: %(default)s)")
    p.add_argument("--check", action="store_true", help=f"exit 1 if the ratio < {REQUIRED_RATIO}")
    args = p.parse_args(argv)
    os.environ["PIPELINE_QUIET"] = "1"
    bare_name, all_name = "bare Pillow loop", f"ingest, workers=0 ({os.cpu_count()} CPUs)"
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as d:
        tmp = Path(d)
        files = build_folder(tmp / "root", args.n)
        kept = ingest(tmp / "root", tmp, 0)["kept"]  # warm-up: imports, page cache
        if kept != len(files):
            sys.exit(f"bench: ingest kept {kept} of {len(files)} images")
        variants = {
            bare_name: lambda: bare_loop(files),
            all_name: lambda: ingest(tmp / "root", tmp, 0),
            "ingest, workers=1": lambda: ingest(tmp / "root", tmp, 1),
        }
        best = {name: (float("inf"), float("inf")) for name in variants}
        for _ in range(args.repeats):  # alternate, so drift in machine load hits all variants
            for name, fn in variants.items():
                best[name] = min(best[name], timed(fn))
    bare = best[bare_name][0]
    print(
        f"{len(files)} PNGs, 28x28 grey; best of {args.repeats} by wall time; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'variant':<28} {'wall s':>7} {'images/s':>9} {'speed vs bare':>14} {'CPU s':>6}")
    for name, (t, cpu) in best.items():
        print(f"{name:<28} {t:7.3f} {len(files) / t:9.0f} {bare / t:14.2f} {cpu:6.2f}")
    ratio = bare / best[all_name][0]
    print(f"ingest/bare speed ratio: {ratio:.2f} (>= {REQUIRED_RATIO} required)")
    return 1 if args.check and ratio < REQUIRED_RATIO else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
