"""What an unlabeled pool buys with the shipped params: a Fashion-MNIST folder of 1,000 labeled
images (the first 1,000 of the train set) and the official 10,000 test images,
`root/{train,test}/<class>/`, and a pool folder of the next 9,000 train images with no labels.
The whole default `dvc repro` runs without the pool and with it (`ingest.unlabeled_path`), and
again with each `--candidate`, each for every `--seeds` train seed (`train.seed`: the second
seed re-runs train and evaluate only), all in one run:

    python bench/bench_pool.py --json bench/pool_fmnist_1k.json
    python bench/bench_pool.py --candidate "rounds3: pseudo.rounds=3" --seeds 0

It prints test accuracy on the 10,000 test images per run and seed, the gain over no pool, and
checks that no pool sample (nor a row derived from one) is in val or test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_default_repro import setup  # noqa: E402
from bench_oof_clean import with_sets  # noqa: E402

from pipeline.core.params import Ingest  # noqa: E402
from pipeline.core.schema import PARENT_ID, SAMPLE_ID, SPLIT  # noqa: E402
from pipeline.sources import readers as sources  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def write_folders(root: Path, labeled: int, pool: int) -> tuple[Path, Path]:
    """root/fm/{train,test}/<class>/ and root/pool/: the first `labeled` train images, the 10k
    test images, then the next `pool` train images without their labels."""
    items, _ = sources.SOURCES["fashion-mnist"](Ingest(source="fashion-mnist"))
    train = [it for it in items if it.source_split == "train"]
    test = [it for it in items if it.source_split == "test"]
    for split, chosen in (("train", train[:labeled]), ("test", test)):
        for i, item in enumerate(chosen):
            folder = root / "fm" / split / item.label.replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(item.pixels).save(folder / f"{split}{i:05d}.png")
    (root / "pool").mkdir(parents=True)
    for i, item in enumerate(train[labeled : labeled + pool]):
        Image.fromarray(item.pixels).save(root / "pool" / f"pool{i:05d}.png")
    return root / "fm", root / "pool"


def pool_kept_out(folder: Path) -> bool:
    """True when no pool sample, nor a row made from one, is in val or test."""
    split = pd.read_parquet(folder / "data/split/manifest.parquet")
    pool = set(split.loc[split[SPLIT] == "unlabeled", SAMPLE_ID])
    final = pd.read_parquet(folder / "data/assemble/manifest.parquet")
    held = pd.concat([split[split[SPLIT].isin(["val", "test"])], final[final[SPLIT].isin(["val", "test"])]])
    return bool(pool) and not (held[SAMPLE_ID].isin(pool).any() or held[PARENT_ID].isin(pool).any())


def repro(folder: Path) -> float:
    t0 = time.perf_counter()
    env = {**os.environ, "PIPELINE_QUIET": "1"}
    proc = subprocess.run(["dvc", "repro", "-q"], cwd=folder, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"dvc repro failed in {folder}:\n{proc.stderr[-3000:]}")
    return round(time.perf_counter() - t0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labeled", type=int, default=1000)
    ap.add_argument("--pool", type=int, default=9000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--candidate", action="append", default=[], help='"name: key=value key=value" (with the pool)')
    ap.add_argument("--set", nargs="*", default=[], help="more params for every run, key=value")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
        labeled, pool = write_folders(Path(tmp) / "images", args.labeled, args.pool)
        common = ["ingest.source=imagefolder", f"ingest.path={labeled}", *args.set]
        runs = {"no pool": [], "pool": [f"ingest.unlabeled_path={pool}"]}
        for spec in args.candidate:
            name, sets = spec.split(":", 1)
            runs[name.strip()] = [f"ingest.unlabeled_path={pool}", *sets.split()]
        for run, sets in runs.items():
            folder = Path(tmp) / run.replace(" ", "-")
            params = with_sets(shipped, common + sets)
            setup(folder, params)
            rows = []
            for seed in args.seeds:
                params["train"]["seed"] = seed
                (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
                seconds = repro(folder)
                evaluate = json.loads((folder / "metrics/evaluate.json").read_text())
                rows.append({"seed": seed, "seconds": seconds, "test_accuracy": evaluate["accuracy"]})
            pseudo = json.loads((folder / "metrics/pseudo.json").read_text())
            acc = [r["test_accuracy"] for r in rows]
            results[run] = {
                "overrides": sets,
                "seeds": rows,
                "mean": round(float(np.mean(acc)), 4),
                "pool_kept_out": pool_kept_out(folder) if sets else None,
                "pseudo": {k: pseudo.get(k) for k in ("kept", "coverage", "estimated_precision")},
                "n_test": evaluate.get("n"),
            }
            print(
                f"{run}: test accuracy {acc} (mean {results[run]['mean']}), {[r['seconds'] for r in rows]} s",
                flush=True,
            )
    base = results["no pool"]["mean"]
    for run, r in results.items():
        r["gain"] = round(r["mean"] - base, 4)
        print(f"{run}: {r['gain']:+.4f} over no pool; pool kept out of val/test: {r['pool_kept_out']}")
    if args.json:
        meta = {"labeled": args.labeled, "pool": args.pool, "set": args.set, "threads": os.cpu_count()}
        args.json.write_text(json.dumps({**meta, "runs": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
