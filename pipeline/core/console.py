"""Logging and progress bars, silenced together by `--quiet`."""

from __future__ import annotations

import logging
import os

from tqdm.auto import tqdm

log = logging.getLogger("pipeline")
_quiet = False


def setup(quiet: bool) -> None:
    global _quiet
    _quiet = quiet
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(name)s: %(message)s")


def progress(iterable=None, **kwargs):
    """tqdm that `--quiet` (or PIPELINE_QUIET=1) turns off."""
    disable = _quiet or os.environ.get("PIPELINE_QUIET") == "1"
    return tqdm(iterable, disable=disable, dynamic_ncols=True, mininterval=0.5, **kwargs)
