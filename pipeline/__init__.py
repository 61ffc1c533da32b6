"""A DVC-run, data-centric pipeline for labeled image-classification datasets."""

__version__ = "0.1.0"
