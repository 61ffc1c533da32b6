"""Curriculum vs uniform sampling at the same number of steps: test accuracy over train seeds.

Runs ingest -> split -> oof -> clean -> mine -> assemble once (the source's default params plus
`--set`), then `train` and `evaluate` for each `train.curriculum` and each seed, where the seed
(`base.seed`, read by train and evaluate only here, since the stages before them are not re-run)
moves the model's initialisation and shuffling alone. Reports mean and std per curriculum.

    python bench/bench_curriculum.py --json bench/curriculum_results.json
    python bench/bench_curriculum.py --set ingest.source=fashion-mnist train.epochs=12 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import yaml
from bench_oof_clean import with_sets
from bench_pseudo import flags

ROOT = Path(__file__).resolve().parents[1]
CURRICULA = ("none", "easy_to_hard", "hard_to_easy")


def stage(folder: Path, name: str, params_file: Path) -> None:
    import subprocess

    cmd = [sys.executable, "-m", "pipeline", name, "--quiet", "--params", str(params_file), *flags(name, [])]
    proc = subprocess.run(cmd, cwd=folder, env={**os.environ, "PIPELINE_QUIET": "1"}, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--curricula", nargs="*", default=list(CURRICULA), choices=CURRICULA)
    ap.add_argument("--set", nargs="*", default=[], help="params for every run, key=value")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    common = ["augment.enabled=false", "evaluate.robustness.max_samples=100", *args.set]
    results = {"set": common, "runs": [], "summary": {}}
    with tempfile.TemporaryDirectory(prefix="bench-curriculum-") as tmp:
        folder = Path(tmp)
        for name in ("pipeline", "augment_policies", "labels"):
            shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        params_file = folder / "params.yaml"
        params_file.write_text(yaml.safe_dump(with_sets(shipped, common), sort_keys=False))
        for name in ("ingest", "split", "oof", "clean", "mine", "assemble"):
            stage(folder, name, params_file)
        for curriculum in args.curricula:
            accs = []
            for seed in args.seeds:
                sets = [*common, f"train.curriculum={curriculum}", f"base.seed={seed}"]
                params_file.write_text(yaml.safe_dump(with_sets(shipped, sets), sort_keys=False))
                for name in ("train", "evaluate"):
                    stage(folder, name, params_file)
                acc = json.loads((folder / "metrics/evaluate.json").read_text())["accuracy"]
                train = json.loads((folder / "metrics/train.json").read_text())
                accs.append(acc)
                results["runs"].append({"curriculum": curriculum, "seed": seed, "accuracy": acc, "train": train})
                print(f"{curriculum} seed {seed}: test accuracy {acc} (best epoch {train['best_epoch']})", flush=True)
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            results["summary"][curriculum] = {"mean": round(statistics.mean(accs), 4), "std": round(sd, 4)}
            print(f"{curriculum}: {statistics.mean(accs):.4f} +- {sd:.4f} over {len(accs)} seeds", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
