"""Write the first N Fashion-MNIST train images as colour 64x64 PNGs, `root/<class>/<index>.png`:
each garment tinted with its own random colour on its own random background, then resized
(bicubic). A stand-in for a user's small folder of RGB photos or icons, of another kind than the
28x28 grey originals (colour, size):

    python bench/tinted_folder.py /data/tint1500 --n 1500
    python bench/bench_oof_clean.py --set ingest.source=imagefolder ingest.path=/data/tint1500

The colours are drawn from (seed, index), so the same command writes the same files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.core.params import Ingest  # noqa: E402
from pipeline.sources import readers as sources  # noqa: E402


def tint(grey: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """The garment (grey level = coverage) in a random colour over a random background colour."""
    g = grey.astype(np.float64)[..., None] / 255.0
    fg, bg = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    rgb = np.clip(bg * (1 - g) + fg * g, 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BICUBIC))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    items, _ = sources.SOURCES["fashion-mnist"](Ingest(source="fashion-mnist"))
    root = Path(args.root)
    train = [it for it in items if it.source_split == "train"][: args.n]
    for i, item in enumerate(train):
        folder = root / item.label.replace("/", "-")  # T-shirt/top
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([args.seed, i])
        Image.fromarray(tint(item.pixels, rng, args.size)).save(folder / f"{i:05d}.png")
    print(f"{len(train)} images under {root}")


if __name__ == "__main__":
    main()
