"""ingest: turn a source into a canonical dataset, quarantining what cannot be used.

Writes `<out>/manifest.parquet` (sample_id, path, label, label_id, group, origin, parent_id,
source_split, hidden_label, background, pixel_sha256, store, row, and the image-quality properties
of the original, `quality_*`: pipeline/quality/image.py), `<out>/images/*.npy` shards,
`<out>/quarantine.csv` (path, reason, detail) and `<out>/identical_decodes.csv` (distinct files
whose pixels came out the same). Every input image is either kept or quarantined with a reason;
files beside the images that are no image format (by extension: `.txt`, `.ogg`, `.json`, ...) are
skipped and counted by extension; `metrics/ingest.json` holds the counts, which always add up.
`background` is what a transparent image was composited onto (`ingest.background`), None if opaque.
Exits with code 2 when the quarantined fraction passes `ingest.max_bad_fraction`.

Unlabeled images (the pool: `ingest.unlabeled_path`, empty CSV labels, or labels hidden by
`ingest.keep_labels`) have label None and label_id -1; `hidden_label` keeps a hidden label's truth,
for measuring what the pool's pseudo-labels get right.
"""

from __future__ import annotations

import argparse
import contextlib
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from pipeline.core import dataset, schema, wiring
from pipeline.core.console import log, progress
from pipeline.core.errors import PipelineError
from pipeline.core.wiring import StageParams
from pipeline.quality import image as quality
from pipeline.sources.decode import decode_items
from pipeline.sources.readers import SIDECAR, SOURCES, auto_shape, unlabeled

QUARANTINE = "quarantine.csv"
IDENTICAL = "identical_decodes.csv"  # distinct files that decode to the same pixels: content lost


def identical_decodes(df: pd.DataFrame, files: dict) -> pd.DataFrame:
    """(path, pixel_sha256, background) of the kept samples whose pixels equal another's although
    their files differ: the decode lost what told them apart (transparency onto one colour, a
    resize), which split would otherwise call exact duplicates. Byte-identical copies are not here."""
    sha = df[schema.SAMPLE_ID].map(files)
    groups = df.assign(file_sha256=sha)[sha.notna()].groupby(schema.PIXEL_SHA256)["file_sha256"].transform("nunique")
    lost = df.loc[groups.index[groups.to_numpy() > 1], ["path", "pixel_sha256", "background"]]
    return lost.sort_values([schema.PIXEL_SHA256, schema.PATH]).reset_index(drop=True)


class Result(NamedTuple):
    samples: pd.DataFrame  # the manifest
    classes: list[str]
    quarantine: pd.DataFrame  # path, reason, detail
    identical: pd.DataFrame  # identical_decodes(): path, pixel_sha256, background
    metrics: dict


def run(params: StageParams, store: dataset.ShardWriter) -> Result:
    """Ingest `params.ingest.source`. The kept images' pixels stream into `store` as they decode
    (the one output run takes: holding every decoded image until the end would cap a dataset at
    the memory); the manifest, the quarantine and the metrics come back to be written."""
    cfg = params.ingest
    source = SOURCES[cfg.source]
    items, declared = source(cfg)
    if cfg.unlabeled_path is not None:
        items += unlabeled(cfg.unlabeled_path)
    # files beside the images that are no image format (descriptions, sounds, metadata): counted, not bad input
    skipped = Counter(it.detail for it in items if it.reason == SIDECAR)
    items = [it for it in items if it.reason != SIDECAR]
    if not items:
        others = f" ({sum(skipped.values())} other files skipped: {dict(sorted(skipped.items()))})" if skipped else ""
        raise PipelineError(f"no images found under {cfg.path}{others}")
    size, channels, why = auto_shape(items, cfg)
    if why:
        log.info("ingest: auto %s; set ingest.image_size / ingest.channels to override", why)
    rows, bad, seen = [], [], {}
    # closing(): the pool ends when the loop does, even when the loop raises
    pixels = decode_items(
        items, size, channels, cfg.max_pixels, cfg.min_side, cfg.workers, params.base.executor, cfg.background, True
    )
    files = {}  # sample_id -> the file's SHA-256, for distinct files that decode to the same pixels
    with contextlib.closing(pixels) as decoded:
        for item, pixels, reason, detail, background, file_sha, props in progress(
            decoded, desc="ingest", unit="img", total=len(items)
        ):
            if reason is None and cfg.classes is not None and item.label is not None and item.label not in cfg.classes:
                reason, detail = "unknown_label", f"label {item.label!r} is not in ingest.classes"
            sid = dataset.sample_id(item.path)
            if reason is None and sid in seen:
                reason, detail = "duplicate_id", f"same path as an earlier item ({seen[sid]})"
            if reason is not None:
                bad.append({"path": item.path, "reason": reason, "detail": detail})
                continue
            seen[sid], files[sid] = item.path, file_sha
            store_name, row = store.add(pixels)
            rows.append(
                {
                    "sample_id": sid,
                    "path": item.path,
                    "label": item.label,
                    "group": item.group,
                    "source_split": item.source_split,
                    "background": background,
                    "pixel_sha256": dataset.pixel_hash(pixels),
                    "store": store_name,
                    "row": row,
                    **dict(zip(quality.COLUMNS, props.tolist())),
                }
            )
    store.close()
    df = pd.DataFrame(
        rows,
        columns=[
            "sample_id",
            "path",
            "label",
            "group",
            "source_split",
            "background",
            "pixel_sha256",
            "store",
            "row",
            *quality.COLUMNS,
        ],
    )
    df["quality_grey"] = df["quality_grey"].astype(bool)
    present = set(df[schema.LABEL].dropna())
    if cfg.classes is None:
        classes = [c for c in declared if c in present]
        empty = [c for c in declared if c not in present]
    else:
        classes, empty = list(cfg.classes), [c for c in cfg.classes if c not in present]
    df.insert(3, "label_id", df[schema.LABEL].map({c: i for i, c in enumerate(classes)}).fillna(-1).astype("int64"))
    df.insert(5, "origin", schema.REAL)
    df.insert(6, "parent_id", None)
    df.insert(8, "hidden_label", None)
    hidden = hide_labels(df, cfg.keep_labels, params.base.seed)
    df.loc[hidden, schema.HIDDEN_LABEL] = df.loc[hidden, schema.LABEL]
    df.loc[hidden, schema.LABEL], df.loc[hidden, schema.LABEL_ID] = None, -1
    labeled = df[schema.LABEL].notna()
    quarantine = pd.DataFrame(bad, columns=["path", "reason", "detail"])
    lost = identical_decodes(df, files)
    metrics = {
        "source": cfg.source,
        "executor": params.base.executor,
        "in": len(items),
        "kept": len(df),
        "quarantined": len(quarantine),
        "quarantined_fraction": round(len(quarantine) / max(len(items), 1), 6),
        "by_reason": dict(sorted(Counter(quarantine["reason"]).items())),
        "transparent": {k: int(v) for k, v in sorted(df[schema.BACKGROUND].value_counts().items())},
        "identical_decodes": {
            "files": len(lost),
            "groups": int(lost[schema.PIXEL_SHA256].nunique()) if len(lost) else 0,
        },
        "skipped": sum(skipped.values()),  # not images (by extension): neither kept nor quarantined
        "skipped_by_extension": dict(sorted(skipped.items())),
        "unlabeled": int((~labeled).sum()),
        "hidden_labels": int(hidden.sum()),
        "classes": len(classes),
        "per_class": {c: int((df[schema.LABEL] == c).sum()) for c in classes},
        "empty_classes": empty,
        "image_size": size,
        "channels": channels,
    }
    assert metrics["in"] == metrics["kept"] + metrics["quarantined"]
    assert metrics["kept"] == sum(metrics["per_class"].values()) + metrics["unlabeled"]
    return Result(df, classes, quarantine, lost, metrics)


def write(params: StageParams, out: Path) -> dict:
    """Run ingest into the folder `out` (replaced only when it succeeds); return the metrics."""
    with dataset.staged_dir(out) as tmp:
        result = run(params, dataset.ShardWriter(tmp / "images", out / "images", params.ingest.shard_size))
        dataset.write_manifest(result.samples, tmp / dataset.MANIFEST, result.classes, out)
        dataset.write_csv(tmp / QUARANTINE, result.quarantine)
        dataset.write_csv(tmp / IDENTICAL, result.identical)
    return result.metrics


def hide_labels(df: pd.DataFrame, keep: float, seed: int) -> np.ndarray:
    """Rows whose label `ingest.keep_labels` hides: of each class's labeled samples outside a source
    test set, all but the `keep` fraction (at least one) that comes first in (seed, sample_id) order."""
    hide = np.zeros(len(df), bool)
    if keep >= 1:
        return hide
    candidates = df[df[schema.LABEL].notna() & (df[schema.SOURCE_SPLIT].fillna("") != "test")]
    order = candidates.assign(key=[dataset.sample_seed(seed, f"keep-label:{s}") for s in candidates[schema.SAMPLE_ID]])
    for _, rows in order.sort_values("key", kind="stable").groupby(schema.LABEL, sort=False):
        hide[rows.index[max(1, round(keep * len(rows))) :]] = True
    return hide


STAGE = wiring.Stage(
    "ingest", reads=(), writes=(wiring.Flag("--out", "output folder"),), params=("base", "ingest"), plots=False
)


def main(params: StageParams, args: argparse.Namespace) -> None:
    out = Path(args.out)
    metrics = write(params, out)
    dataset.write_json(args.metrics, metrics)
    log.info(
        "ingest: %d in, %d kept (%d unlabeled), %d quarantined %s",
        metrics["in"],
        metrics["kept"],
        metrics["unlabeled"],
        metrics["quarantined"],
        metrics["by_reason"] or "",
    )
    lost = metrics["identical_decodes"]
    if lost["files"]:
        log.warning(
            "ingest: %d distinct files decode to identical pixels (%d groups, see %s): the decode loses what "
            "tells them apart (transparency: ingest.background; size: ingest.image_size), so split will "
            "take them for exact duplicates",
            lost["files"],
            lost["groups"],
            out / IDENTICAL,
        )
    if metrics["skipped"]:
        log.info(
            "ingest: %d files beside the images skipped, not images by their extension: %s",
            metrics["skipped"],
            metrics["skipped_by_extension"],
        )
    if metrics["empty_classes"]:
        fate = (
            "kept: ingest.classes fixes the list" if params.ingest.classes is not None else "left out of the class list"
        )
        log.warning("classes with no usable image (%s): %s", fate, ", ".join(metrics["empty_classes"]))
    if metrics["kept"] == 0:
        raise PipelineError(f"no usable image in the source: all {metrics['in']} quarantined (see {out / QUARANTINE})")
    if metrics["kept"] == metrics["unlabeled"]:
        raise PipelineError(f"no labeled image among the {metrics['kept']} kept: the pool needs labeled ones beside it")
    if metrics["classes"] < 2:
        named = ", ".join(f"{c} ({n} images)" for c, n in metrics["per_class"].items())
        raise PipelineError(
            f"{metrics['classes']} class with usable images ({named}): a classifier "
            "needs at least 2 (one folder per class, or a label column with 2+ values)"
        )
    if metrics["quarantined_fraction"] > params.ingest.max_bad_fraction:
        raise PipelineError(
            f"{metrics['quarantined']} of {metrics['in']} items quarantined "
            f"({metrics['quarantined_fraction']:.1%} > ingest.max_bad_fraction "
            f"{params.ingest.max_bad_fraction:.1%}); see {out / QUARANTINE}"
        )
