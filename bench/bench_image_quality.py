"""The image-quality detectors on real corpora: flag rates per type, agreement with cleanvision on
the same files, and what measuring costs ingest, in one run.

    python bench/bench_image_quality.py [--folder DIR ...] [--fmnist] [--json bench/image_quality_results.json]

Corpora: scikit-learn's digits and Fashion-MNIST (in-memory arrays: measured in one vectorised
pass), and each `--folder` (one class per sub-folder: an icon theme, clip art). For a folder,
cleanvision's Imagelab runs on the same files (at most `--cleanvision` of them) with its default
thresholds, and the table gives, per type, how many each flags and on how many files they agree.
Timing: the ingest stage's decode with and without measuring, best of 2.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

TYPES = ("dark", "light", "low_information", "blurry", "odd_aspect_ratio", "odd_size", "grayscale")


def decoded(cfg_overrides: dict, measure: bool) -> tuple[pd.DataFrame, float]:
    """(the kept samples' paths and quality columns, seconds) through ingest's own reader and decoder."""
    from pipeline.core import params
    from pipeline.quality import image
    from pipeline.sources.decode import decode_items
    from pipeline.sources.readers import SIDECAR, SOURCES, auto_shape

    cfg = params.parse({"ingest": cfg_overrides}).ingest
    items, _ = SOURCES[cfg.source](cfg)
    items = [it for it in items if it.reason != SIDECAR]
    size, channels, _ = auto_shape(items, cfg)
    t0 = time.perf_counter()
    rows = [
        (d.item.file or d.item.path, *(d.quality if measure else ()))
        for d in decode_items(items, size, channels, cfg.max_pixels, cfg.min_side, 1, "local", cfg.background, measure)
        if d.reason is None
    ]
    seconds = time.perf_counter() - t0
    return pd.DataFrame(rows, columns=["file", *(image.COLUMNS if measure else ())]), seconds


def flags(df: pd.DataFrame) -> pd.DataFrame:
    from pipeline.quality import issues

    return pd.DataFrame({t: issues.get(t).find(df, None)[f"is_{t}_issue"].to_numpy() for t in TYPES})


def cleanvision_flags(files: list[str]) -> pd.DataFrame:
    from cleanvision import Imagelab

    lab = Imagelab(filepaths=files)
    lab.find_issues({t: {} for t in TYPES}, verbose=False)
    return pd.DataFrame({t: lab.issues[f"is_{t}_issue"].reindex(files).to_numpy() for t in TYPES})


def corpus(name: str, overrides: dict, limit: int) -> dict:
    df, with_s = decoded(overrides, True)
    _, without_s = decoded(overrides, False)
    _, with_s2 = decoded(overrides, True)
    found = flags(df)
    row = {
        "corpus": name,
        "images": len(df),
        "decode_s": round(without_s, 2),
        "decode_and_measure_s": round(min(with_s, with_s2), 2),
        "rates": {t: round(float(found[t].mean()), 4) for t in TYPES},
        "flagged": {t: int(found[t].sum()) for t in TYPES},
    }
    if overrides.get("source") == "imagefolder" and limit:
        from PIL import Image

        # cleanvision 0.3.7 fails on grey + alpha PNGs (its brightness indexes a third band): leave them out
        modes = np.array([Image.open(f).mode for f in df["file"]])
        readable = np.flatnonzero(~np.isin(modes, ["LA", "La", "PA"]))
        pick = np.sort(np.random.default_rng(0).permutation(readable)[:limit])
        row["cleanvision_unreadable"] = int(len(df) - len(readable))
        ours, theirs = found.iloc[pick].reset_index(drop=True), cleanvision_flags(df["file"].iloc[pick].tolist())
        row["cleanvision"] = {
            t: {
                "ours": int(ours[t].sum()),
                "cleanvision": int(theirs[t].sum()),
                "agree": int((ours[t] == theirs[t]).sum()),
            }
            for t in TYPES
        }
        row["cleanvision_files"] = len(pick)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, action="append", default=[])
    ap.add_argument("--fmnist", action="store_true", help="also the 70,000 Fashion-MNIST images")
    ap.add_argument("--cleanvision", type=int, default=2000, help="files cleanvision checks per folder")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    runs = [("digits", {"source": "digits"})]
    if args.fmnist:
        runs.append(("fashion-mnist", {"source": "fashion-mnist"}))
    runs += [(str(f), {"source": "imagefolder", "path": str(f)}) for f in args.folder]
    results = []
    for name, overrides in runs:
        results.append(corpus(name, overrides, args.cleanvision))
        print(json.dumps(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
