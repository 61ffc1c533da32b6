"""Logging and progress bars, silenced together by `--quiet`."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from tqdm.auto import tqdm

log = logging.getLogger("pipeline")
TIMES = Path(".pipeline/stage_times.json")  # outside DVC: wall times would make outputs differ run to run
_quiet = False


def setup(quiet: bool) -> None:
    global _quiet
    _quiet = quiet
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(name)s: %(message)s")


def progress(iterable=None, **kwargs):
    """tqdm that `--quiet` (or PIPELINE_QUIET=1) turns off."""
    disable = _quiet or os.environ.get("PIPELINE_QUIET") == "1"
    return tqdm(iterable, disable=disable, dynamic_ncols=True, mininterval=0.5, **kwargs)


def tell_estimate(what: str, started: float, epochs: int, images: int, models: int = 1, more: str = "") -> None:
    """After a long stage's first epoch: its time on this machine, from that epoch's
    (`started`: time.perf_counter() when training began)."""
    per_epoch = time.perf_counter() - started
    log.info(
        "%s: %s%d epochs on %d images: about %.1f min%s (the first epoch took %.1f s)",
        what,
        f"{models} models x " if models > 1 else "",
        epochs,
        images,
        per_epoch * epochs * models / 60,
        more,
        per_epoch,
    )


def record_time(stage: str, seconds: float) -> None:
    """The stage's wall time, for the summary's "where the time went" and ablate's estimate (the
    last run of each stage)."""
    times = json.loads(TIMES.read_text()) if TIMES.exists() else {}
    times[stage] = round(seconds, 2)
    TIMES.parent.mkdir(parents=True, exist_ok=True)
    TIMES.write_text(json.dumps(times, indent=1) + "\n")
