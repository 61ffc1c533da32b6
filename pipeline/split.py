"""split: stratified, group-aware, deterministic train/val/test assignment.

Writes `<out>/manifest.parquet`: the ingested manifest plus `cluster_id` (the unit that is
never split: a group, or a sample on its own) and `split`. Samples are not copied.

Assignment is by quantile: inside each label stratum, clusters are ordered by a hash of
(base.seed, cluster_id) and cut at the cumulative fractions. That is exact stratification
up to one cluster per boundary, and adding a sample moves at most the clusters next to a
boundary instead of reshuffling the rest.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import dataset
from pipeline.console import log
from pipeline.params import Params, Split

ORDER = ("test", "val", "train")  # cut order along each stratum


def clusters(df: pd.DataFrame) -> pd.Series:
    """The unit that must stay within one split.

    This is the seam for duplicate-aware clustering: here a non-empty `group` forms a
    cluster, and every other sample is its own.
    """
    group = df["group"].astype(object) if "group" in df else pd.Series(None, index=df.index)
    has_group = group.notna() & (group.astype(str) != "")
    return pd.Series(np.where(has_group, "g:" + group.astype(str), "s:" + df["sample_id"]),
                     index=df.index)


def assign(df: pd.DataFrame, fractions: dict[str, float], seed: int) -> pd.Series:
    """Split name per row of `df` (needs `cluster_id`, `label`), stratified by label."""
    sizes = df.groupby("cluster_id").size()
    label = df.groupby("cluster_id")["label"].agg(lambda s: s.value_counts().sort_index().idxmax())
    units = pd.DataFrame({"size": sizes, "label": label})
    units["key"] = [dataset.sample_seed(seed, c) for c in units.index]
    units = units.sort_values(["label", "key"], kind="stable")
    edges = np.cumsum([fractions[s] for s in ORDER])
    out = pd.Series("", index=units.index, dtype=object)
    for _, stratum in units.groupby("label", sort=False):
        mid = (stratum["size"].cumsum() - stratum["size"] / 2) / stratum["size"].sum()
        idx = np.minimum(np.searchsorted(edges, mid.to_numpy(), side="right"), len(ORDER) - 1)
        out[stratum.index] = np.asarray(ORDER)[idx]
    return df["cluster_id"].map(out)


def run(df: pd.DataFrame, cfg: Split, seed: int) -> tuple[pd.DataFrame, dict]:
    df = df.copy()
    df["cluster_id"] = clusters(df)
    fixed_test = (cfg.respect_source_split and "source_split" in df
                  and (df["source_split"] == "test").any())
    df["split"] = ""
    if fixed_test:
        is_test = (df["source_split"] == "test").to_numpy()
        df.loc[is_test, "split"] = "test"
        rest = cfg.fractions["train"] + cfg.fractions["val"]
        fractions = {"train": cfg.fractions["train"] / rest, "val": cfg.fractions["val"] / rest,
                     "test": 0.0}
        log.info("split: keeping the source's test set (%d samples)", is_test.sum())
        df.loc[~is_test, "split"] = assign(df[~is_test], fractions, seed)
    else:
        df["split"] = assign(df, cfg.fractions, seed)
    counts = df["split"].value_counts()
    metrics = {
        "in": len(df), "clusters": int(df["cluster_id"].nunique()),
        "source_test_kept": bool(fixed_test),
        **{s: int(counts.get(s, 0)) for s in ORDER},
        "per_class": {s: {str(k): int(v) for k, v in
                          df.loc[df["split"] == s, "label"].value_counts().sort_index().items()}
                      for s in ORDER},
    }
    assert sum(metrics[s] for s in ORDER) == metrics["in"]
    return df, metrics


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--in", dest="inp", default="data/ingest", help="ingest output (default: %(default)s)")
    p.add_argument("--out", default="data/split", help="output folder (default: %(default)s)")
    p.add_argument("--metrics", default="metrics/split.json", help="counts (default: %(default)s)")


def main(params: Params, args: argparse.Namespace) -> None:
    df, classes = dataset.read_manifest(args.inp)
    df, metrics = run(df, params.split, params.base.seed)
    out = Path(args.out)
    with dataset.staged_dir(out) as tmp:
        dataset.write_manifest(df, tmp / dataset.MANIFEST, classes, final_dir=out)
    dataset.write_json(args.metrics, metrics)
    log.info("split: train %d, val %d, test %d", metrics["train"], metrics["val"], metrics["test"])
    if metrics["val"] == 0:
        log.warning("the val split is empty: training cannot early-stop")
