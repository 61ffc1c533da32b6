"""Small, odd image folders of the kind users bring: a few classes or a dozen, 10 to 80 images
a class, RGB and grey mixed, 32x32 to 320x240, PNG and JPEG, heavy imbalance, a single class.

Each class is a shape (and, in colour folders, a hue) drawn at a random place, size and angle on
a noisy background, so that classes are learnable and no two images are near duplicates.
`FOLDERS` lists them; `make(name, root)` writes one as `root/<class>/<file>` and returns it;
`make_csv(root)` writes a CSV source (`path,label,group`, three shots a group, rows for 4 files
that do not exist) and returns the CSV's path.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")
HUES = ((220, 40, 40), (40, 160, 60), (50, 80, 220))


@dataclass(frozen=True)
class Folder:
    counts: tuple[int, ...]  # images per class
    sizes: tuple[tuple[int, int], ...]  # (w, h) drawn in turn
    grey: float = 0.0  # fraction of images saved as grey ("L")
    jpeg: float = 0.0  # fraction saved as JPEG
    colour: bool = True  # classes differ by hue too (grey folders: by shape only)


FOLDERS = {
    "rgb_3x40": Folder((40, 40, 40), ((64, 64),)),
    "shapes_jpeg_2x25": Folder((25, 25), ((320, 240), (200, 300)), jpeg=1.0),
    "grey_4x30": Folder((30,) * 4, ((32, 32), (48, 48)), grey=1.0, colour=False),
    "imbalanced_5": Folder((80, 40, 20, 10, 10), ((96, 64), (64, 96), (128, 128)), grey=0.2, jpeg=0.5),
    "many_12x10": Folder((10,) * 12, ((32, 32), (96, 72)), grey=0.25, jpeg=0.5),
    "tiny_2x12": Folder((12, 12), ((48, 48),)),
    "single_class": Folder((30,), ((64, 64),)),
}


def _rng(*keys) -> np.random.Generator:
    digest = hashlib.blake2b("/".join(map(str, keys)).encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def draw(k: int, w: int, h: int, rng: np.random.Generator, colour: bool = True) -> Image.Image:
    """Class `k` (a shape, and a hue when `colour`) on a noisy background of size w x h."""
    base = rng.integers(90, 170, 3) if colour else np.full(3, rng.integers(90, 170))
    noise = rng.normal(0, 18, (h, w, 1 if not colour else 3))
    bg = np.clip(base + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(np.broadcast_to(bg, (h, w, 3)).copy(), "RGB")
    d = ImageDraw.Draw(img)
    shape = SHAPES[k % len(SHAPES)]
    hue = np.array(HUES[(k // len(SHAPES)) % len(HUES)] if colour else (20, 20, 20))
    fill = tuple(int(v) for v in np.clip(hue + rng.integers(-25, 26, 3), 0, 255))
    side = min(w, h)
    r = rng.uniform(0.2, 0.35) * side
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.regular_polygon((cx, cy, r), 4, rotation=float(rng.uniform(0, 90)), fill=fill)
    elif shape == "triangle":
        d.regular_polygon((cx, cy, r), 3, rotation=float(rng.uniform(0, 120)), fill=fill)
    else:
        t = max(2.0, r / 3)
        d.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
        d.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)
    return img


def class_name(k: int, colour: bool) -> str:
    shape = SHAPES[k % len(SHAPES)]
    return f"{('red', 'green', 'blue')[(k // len(SHAPES)) % 3]}_{shape}" if colour else shape


def make(name: str, root: Path) -> Path:
    spec, out = FOLDERS[name], Path(root) / name
    for k, count in enumerate(spec.counts):
        folder = out / class_name(k, spec.colour)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            rng = _rng(name, k, i)
            w, h = spec.sizes[i % len(spec.sizes)]
            img = draw(k, w, h, rng, spec.colour)
            if rng.random() < spec.grey:
                img = img.convert("L")
            if rng.random() < spec.jpeg:
                img.save(folder / f"{i:03d}.jpg", quality=90)
            else:
                img.save(folder / f"{i:03d}.png")
    return out


def make_csv(root: Path, classes: int = 3, groups: int = 10, missing: int = 4) -> Path:
    out = Path(root) / "csv_groups"
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(classes):
        for g in range(groups):
            for shot in range(3):
                rng = _rng("csv", k, g, shot)
                name = f"images/{k}_{g}_{shot}.{'jpg' if shot == 2 else 'png'}"
                draw(k, 64, 64, rng).save(out / name, **({"quality": 90} if shot == 2 else {}))
                rows.append(f"{name},{class_name(k, True)},session{k}-{g}")
    rows += [f"images/gone{i}.png,{class_name(0, True)},lost" for i in range(missing)]
    (out / "labels.csv").write_text("path,label,group\n" + "\n".join(rows) + "\n")
    return out / "labels.csv"


def make_digits_pool(
    root: Path, labeled: int = 900, unlabeled: int = 600, copies: int = 30
) -> tuple[Path, Path, dict[str, str], dict[str, str]]:
    """scikit-learn's digits as a user's folders: the first `labeled` as `root/digits/<class>/`,
    the next `unlabeled` as an unlabeled folder two levels deep, plus `copies` byte copies of
    labeled files in it. Returns (labeled folder, unlabeled folder, {unlabeled path: true class},
    {copy's path: the original's path under the labeled folder})."""
    import shutil

    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = (d.images * (255 / 16)).round().astype(np.uint8)
    lab, pool = Path(root) / "digits", Path(root) / "digits_pool"
    truth, copied = {}, {}
    for i in range(labeled + unlabeled):
        rel = f"{d.target[i]}/{i:04d}.png" if i < labeled else f"batch{i % 3}/day{i % 2}/{i:04d}.png"
        (lab if i < labeled else pool).joinpath(rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i]).save((lab if i < labeled else pool) / rel)
        if i >= labeled:
            truth[rel] = str(d.target[i])
    for j, i in enumerate(range(0, labeled, labeled // copies)[:copies]):
        orig, rel = f"{d.target[i]}/{i:04d}.png", f"copies/{j:03d}.png"
        (pool / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(lab / orig, pool / rel)
        truth[rel], copied[rel] = str(d.target[i]), orig
    return lab, pool, truth, copied
