"""Write the first N Fashion-MNIST train images as an image folder, `root/<class>/<index>.png`
(`T-shirt-top` for `T-shirt/top`): the small-folder case of the label-error benchmark.

    python bench/fmnist_folder.py /data/fm6k --n 6000
    python bench/bench_oof_clean.py --set ingest.source=imagefolder ingest.path=/data/fm6k

Sample ids come from the file names, so the folds and the injected noise follow them: a folder
written with other names gives other (equally valid) figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.core.params import Ingest  # noqa: E402
from pipeline.sources import readers as sources  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--n", type=int, default=6000)
    args = ap.parse_args()
    items, _ = sources.SOURCES["fashion-mnist"](Ingest(source="fashion-mnist"))
    root = Path(args.root)
    for i, item in enumerate(it for it in items if it.source_split == "train"):
        if i == args.n:
            break
        folder = root / item.label.replace("/", "-")  # T-shirt/top
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(item.pixels).save(folder / f"{i:05d}.png")
    print(f"{min(i, args.n)} images under {root}")


if __name__ == "__main__":
    main()
