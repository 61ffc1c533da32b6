"""The split on pictures that are not pixel copies: one design at several sizes, chains of near
duplicates. For a folder whose file names tell the design (`--design REGEX`, its first group),
ingest then split under three settings, in one run:

  before    split.suspects off, no cluster limit (the split of the previous round)
  default   suspected pairs reported (split.suspects), split.cluster_limit on
  join      split.suspects.join: true (suspected pairs joined before splitting)

and for each: designs with renderings in more than one split, pairs of renderings that cross
splits, suspected pairs (and how many join two renderings of one design), the largest cluster,
links cut by the limit, classes with no val or test sample, and the split stage's wall time.

    python bench/bench_split_content.py --folder /tmp/adwall --design '^[^/]+/\\d+x\\d+_(.+?)(?:\\.symbolic)?\\.png$'
    python bench/bench_split_content.py --fmnist      # the 70,000 Fashion-MNIST images: time and suspects, off vs on
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

SETTINGS = {
    "before": {"suspects": {"enabled": False}, "cluster_limit": {"share": 1.0, "min_size": 10**9}},
    "default": {},
    "join": {"suspects": {"join": True}},
}


def stage(root: Path, name: str, params: dict, *args: str) -> float:
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "pipeline", name, "--params", str(root / "params.yaml"), "--quiet", *args]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def split_once(root: Path, ingest_params: dict, split_params: dict) -> tuple[pd.DataFrame, dict, pd.DataFrame, float]:
    out = root / "split"
    seconds = stage(
        root,
        "split",
        {**ingest_params, "split": split_params},
        *("--ingest", str(root / "ingest"), "--embed", str(root / "embed"), "--out", str(out)),
        *("--metrics", str(root / "split.json"), "--plots", str(root / "plots")),
    )
    df = pd.read_parquet(out / "manifest.parquet")
    return df, json.loads((root / "split.json").read_text()), pd.read_csv(out / "suspected_pairs.csv"), seconds


def crossing(df: pd.DataFrame, design: pd.Series) -> tuple[int, int, int]:
    """(designs, designs in more than one split, pairs of renderings of one design in different splits)."""
    kept = df[df["split"].isin(("train", "val", "test", "unlabeled"))].assign(design=design)
    spans = kept.groupby("design")["split"].nunique()
    pairs = sum(
        sum(a != b for a, b in itertools.combinations(g["split"].replace("unlabeled", "train"), 2))
        for _, g in kept.groupby("design")
    )
    return int(len(spans)), int((spans > 1).sum()), int(pairs)


def folder(path: Path, pattern: str) -> dict:
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-split-") as tmp:
        root = Path(tmp)
        ingest_params = {"ingest": {"source": "imagefolder", "path": str(path)}}
        stage(root, "ingest", ingest_params, "--out", str(root / "ingest"), "--metrics", str(root / "ingest.json"))
        for name, cfg in SETTINGS.items():
            df, m, pairs, seconds = split_once(root, ingest_params, cfg)
            design = df["path"].str.extract(pattern)[0]
            by_id = dict(zip(df["sample_id"], design))
            designs, spanning, crossing_pairs = crossing(df, design)
            results[name] = {
                "images": len(df),
                "designs": designs,
                "designs_in_several_splits": spanning,
                "rendering_pairs_across_splits": crossing_pairs,
                "suspected_pairs": len(pairs),
                "suspected_same_design": int(
                    sum(by_id[a] == by_id[b] for a, b in zip(pairs["sample_a"], pairs["sample_b"]))
                ),
                "largest_cluster": m["largest_cluster"],
                "cut_links": m["cluster_limit"]["cut_links"],
                "kept_whole_clusters": m["cluster_limit"]["kept_whole_clusters"],
                "classes_missing": m["classes_missing_from"],
                "val": m["val"],
                "test": m["test"],
                "split_seconds": round(seconds, 1),
            }
            print(name, json.dumps(results[name]), flush=True)
    return results


def fmnist() -> dict:
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-split-") as tmp:
        root = Path(tmp)
        ingest_params = {"ingest": {"source": "fashion-mnist"}}
        stage(root, "ingest", ingest_params, "--out", str(root / "ingest"), "--metrics", str(root / "ingest.json"))
        for name in ("before", "default", "before", "default"):  # twice each, interleaved: the noise
            df, m, pairs, seconds = split_once(root, ingest_params, SETTINGS[name])
            row = results.setdefault(name, {"split_seconds": [], "suspected_pairs": len(pairs)})
            row["split_seconds"].append(round(seconds, 1))
            row["largest_cluster"], row["cut_links"] = m["largest_cluster"], m["cluster_limit"]["cut_links"]
            print(name, json.dumps(row), flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path)
    ap.add_argument("--design", default=r"^(.*)$", help="regex over the manifest path; group 1 names the design")
    ap.add_argument("--fmnist", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = fmnist() if args.fmnist else folder(args.folder, args.design)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
