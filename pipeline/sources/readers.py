"""The ingest sources, by name (`ingest.source`): each lists its items (a file to decode, or pixels)
and its classes, one module each (digits, idx, folder, table, labelstudio_export; what they share
is in items).

A source never decodes; it only says what there is and why an entry is unusable
(outside the root, not in a class folder, ...), so that ingest can account for all of it.
"""

from __future__ import annotations

from pipeline.core.registry import Registry
from pipeline.sources.digits import digits
from pipeline.sources.folder import UNLABELED, imagefolder, unlabeled
from pipeline.sources.idx import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, idx_source
from pipeline.sources.items import AUTO_MAX_SIZE, SIDECAR, Item, auto_shape, image_extensions
from pipeline.sources.labelstudio_export import UNSURE, labelstudio
from pipeline.sources.table import csv

__all__ = ["AUTO_MAX_SIZE", "FASHION_MNIST_DIR", "SIDECAR", "SOURCES", "UNLABELED", "UNSURE", "Item"]
__all__ += ["auto_shape", "csv", "digits", "image_extensions", "imagefolder", "labelstudio", "unlabeled"]

SOURCES = Registry(
    "source (ingest.source)",
    [
        ("digits", digits),
        ("fashion-mnist", idx_source("fashion-mnist", FASHION_MNIST_DIR, FASHION_MNIST_CLASSES)),
        ("mnist", idx_source("mnist", None, [str(c) for c in range(10)])),
        ("imagefolder", imagefolder),
        ("csv", csv),
        ("labelstudio", labelstudio),
    ],
)
