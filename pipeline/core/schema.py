"""The manifest schema: the columns every stage agrees on, the origins a sample can have, and the
one helper that makes the rows of derived samples (augmented, adversarial, synthetic copies).

A manifest row is a sample. Every manifest has the LINEAGE columns (who it is, its label, its
split, where it came from) and the STORAGE columns (where its pixels are; dataset.py reads them).
A derived stage adds its own columns between the two, and `derived_rows` fills the lineage the
same way for all of them: copied from the parent, or, for a sample with no parent (synthetic),
given.
"""

from __future__ import annotations

import pandas as pd

from pipeline.core import dataset
from pipeline.core.errors import PipelineError

# origins
REAL = "real"  # ingested from the source
AUGMENTED = "augmented"  # a parent's pixels under an augmentation policy (augment)
ADVERSARIAL = "adversarial"  # a parent's pixels under an attack (adversarial)
SYNTHETIC = "synthetic"  # drawn from a generator: no parent (synthesize)
PSEUDO = "pseudo"  # an unlabeled sample's pixels with a label from the models (pseudo)
DERIVED_ORIGINS = (AUGMENTED, ADVERSARIAL, SYNTHETIC, PSEUDO)

POOL = "unlabeled"  # the split of the samples with no label (yet): never val or test

# column names: every module outside core spells a manifest column through these (tests/test_names.py)
SAMPLE_ID, PATH, LABEL, LABEL_ID = "sample_id", "path", "label", "label_id"
GROUP, SPLIT, ORIGIN, PARENT_ID = "group", "split", "origin", "parent_id"
PIXEL_SHA256, STORE, ROW = "pixel_sha256", "store", "row"
WEIGHT = "weight"  # a training row's loss weight (derived manifests and the training set)
SOURCE_SPLIT = "source_split"  # ingest: the source's own train/test, when it has one
HIDDEN_LABEL = "hidden_label"  # ingest: a label ingest.keep_labels hid (the pool's truth)
BACKGROUND = "background"  # ingest: what a transparent image was composited onto
CLUSTER_ID, DUP_GROUP, DUP_OF = "cluster_id", "dup_group", "dup_of"  # split: duplicate clusters
REMOVED_REASON = "removed_reason"  # split and clean: why a sample left training
FOLD = "fold"  # oof: the sample's fold (-1: predicted by the ensemble)
PROBS = "probs"  # oof: out-of-fold class probabilities
TRUE_LABEL, TRUE_LABEL_ID = "true_label", "true_label_id"  # oof: the label before clean.inject_noise
IS_LABEL_ISSUE = "is_label_issue"  # clean: the label detector's flag (each issue type has is_<name>_issue)
HUMAN_LABEL = "human_label"  # clean: the label a person gave (labels/patches.csv)
HARDNESS = "hardness"  # mine: higher is harder

LINEAGE = (SAMPLE_ID, PATH, LABEL, LABEL_ID, GROUP, SPLIT, ORIGIN, PARENT_ID)
STORAGE = (PIXEL_SHA256, STORE, ROW)
INHERITED = (PATH, LABEL, LABEL_ID, GROUP, SPLIT)  # what a derived sample takes from its parent

# the columns a reader of each artifact relies on (its writer may add more)
SAMPLES = (*LINEAGE, *STORAGE)  # any manifest of samples: split, clean, a training set
REQUIRED = {
    "ingest": ("sample_id", "path", "label", "label_id", "group", "origin", "parent_id", "source_split", *STORAGE),
    "samples": SAMPLES,
    "oof": (*SAMPLES, "fold", "probs"),
    "derived": (*SAMPLES, "weight"),
    "training set": (*SAMPLES, "weight"),
}


def columns(*own: str, after_weight: tuple[str, ...] = ()) -> list[str]:
    """A derived manifest's column order: lineage, the stage's own, weight, scores, storage."""
    return [*LINEAGE, *own, "weight", *after_weight, *STORAGE]


def read(path, artifact: str) -> tuple[pd.DataFrame, list[str]]:
    """(manifest, classes) of the `artifact` (a REQUIRED key) at `path`, its columns checked."""
    df, classes = dataset.read_manifest(path)
    return require(df, artifact, path), classes


def require(df: pd.DataFrame, artifact: str, where: object) -> pd.DataFrame:
    """`df` if it has `artifact`'s required columns; else an error naming the missing ones."""
    missing = [c for c in REQUIRED[artifact] if c not in df.columns]
    if missing:
        raise PipelineError(
            f"{where}: not a {artifact} manifest: no column(s) {', '.join(missing)} (re-run the stage that writes it)"
        )
    return df


def real_train(df: pd.DataFrame) -> pd.DataFrame:
    """The real train samples: the parents derived stages may copy, the real part of a training set."""
    return df[(df["split"] == "train") & (df["origin"] == REAL)]


def derived_rows(
    parents: pd.DataFrame | None, origin: str, sample_ids, own: dict, weight: float, storage: dict, **lineage
) -> pd.DataFrame:
    """Rows for derived samples, one per entry of `sample_ids`, in `columns(*own)` order.

    `parents`: one row per derived sample (repeat a parent for several copies); its `INHERITED`
    columns are copied and its `sample_id` becomes `parent_id`. None for samples with no parent
    (synthetic): then `lineage` gives `path`, `label`, `label_id` (group None, split train).
    `own`: the stage's columns; `storage`: `pixel_sha256`, `store`, `row`.
    """
    n = len(sample_ids)
    if parents is not None:
        if len(parents) != n:
            raise ValueError(f"{len(parents)} parent rows for {n} derived samples")
        inherited = {c: (parents[c].to_numpy() if c in parents else None) for c in INHERITED}
        parent_id = parents["sample_id"].to_numpy()
    else:
        inherited = {"group": None, "split": "train", **lineage}
        parent_id = None
    data = {"sample_id": list(sample_ids), **inherited, "origin": origin, "parent_id": parent_id}
    data |= {**own, "weight": weight, **storage}
    return pd.DataFrame(data, columns=columns(*own), index=pd.RangeIndex(n))
