"""The `digits` source: scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), no files."""

from __future__ import annotations

import numpy as np

from pipeline.core.params import Ingest
from pipeline.sources.items import Item


def digits(cfg: Ingest) -> tuple[list[Item], list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    # The bundled digits are 8x8 counts in 0..16; scale them to the 0..255 range of images.
    pixels = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
    items = [Item(path=f"digits/{i:04d}", label=str(y), pixels=pixels[i]) for i, y in enumerate(d.target)]
    return items, [str(c) for c in range(10)]
