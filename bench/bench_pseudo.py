"""Semi-supervised Fashion-MNIST: test accuracy with a few labels, without and with pseudo-labels.

For each label fraction (`ingest.keep_labels`: 1% and 5% of each class keep their label, the rest
join the pool with the truth hidden; the official 10k test set stays the test split) it runs
ingest -> split -> oof -> clean -> mine once, then rows that differ only in what training gets
besides the labeled samples:

- `supervised`: nothing (assemble with no derived data);
- `pseudo-1`: one round of ensemble pseudo-labels (`pseudo.rounds=1`);
- `pseudo-3`: three rounds (two self-trained students, Noisy Student);
- `fixmatch`: the labeled samples alone, the pool as FixMatch's consistency loss in train
  (`train.unlabeled.weight=1`, plus `--fixmatch-set`);
- `fixmatch-off`: its control, the same params without the pool (`train.unlabeled.weight=0`).

Each row then trains (`train`, the same params) and evaluates on the test set. Every stage runs as
`python -m pipeline <stage>` in a scratch folder with this checkout's `pipeline/` copied in.

    python bench/bench_pseudo.py --json bench/pseudo_results.json
    python bench/bench_pseudo.py --fractions 0.01 --set train.epochs=15

It prints, per row, test accuracy and, per pseudo round, coverage and precision (against the
hidden truth) and the estimated precision. One seed per row: the spread between seeds is not
measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from bench_oof_clean import with_sets

ROOT = Path(__file__).resolve().parents[1]


RANDAUGMENT = "augment_policies/randaugment.yaml"  # the shipped default of both policy params train reads


def flags(name: str, derived: list[str], policy: str = RANDAUGMENT, strong: str = RANDAUGMENT) -> list[str]:
    m = ["--metrics", f"metrics/{name}.json"]
    return {
        "ingest": ["--out", "data/ingest", *m],
        "split": [
            "--ingest",
            "data/ingest",
            "--embed",
            "data/embed",
            "--out",
            "data/split",
            *m,
            "--plots",
            "plots/split",
        ],
        "oof": [
            "--split",
            "data/split",
            "--embed",
            "data/embed",
            "--labels",
            "labels/patches.csv",
            "--out",
            "data/oof",
            *m,
        ],
        "clean": ["--oof", "data/oof", "--labels", "labels/patches.csv", "--out", "data/clean", *m]
        + ["--plots", "plots/clean"],
        "mine": ["--oof", "data/oof", "--clean", "data/clean", "--out", "data/mine", *m, "--plots", "plots/mine"],
        "pseudo": ["--clean", "data/clean", "--oof", "data/oof", "--out", "data/pseudo", *m],
        "assemble": ["--clean", "data/clean", "--derived", *derived, "--mine", "data/mine"]
        + ["--out", "data/assemble", *m],
        "train": [
            "--assemble",
            "data/assemble",
            "--split",
            "data/split",
            "--oof",
            "data/oof",
            "--policy",
            policy,
            "--unlabeled-policy",
            strong,
        ]
        + ["--model", "models/model.pt", *m, "--plots", "plots/train"],
        "evaluate": ["--model", "models/model.pt", "--split", "data/split", *m, "--plots", "plots/evaluate"],
    }[name]


def stage(folder: Path, name: str, params_file: Path, derived: list[str] = ()) -> float:
    t0 = time.perf_counter()
    p = yaml.safe_load(params_file.read_text())  # the policy files train reads, as dvc.yaml wires them
    cmd = [sys.executable, "-m", "pipeline", name, "--quiet", "--params", str(params_file)]
    cmd += flags(name, derived, p["augment"]["policy"], p["train"]["unlabeled"]["policy"])
    proc = subprocess.run(cmd, cwd=folder, env={**os.environ, "PIPELINE_QUIET": "1"}, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return round(time.perf_counter() - t0, 1)


def metrics(folder: Path, name: str) -> dict:
    return json.loads((folder / "metrics" / f"{name}.json").read_text())


ROWS = {"supervised": None, "pseudo-1": 1, "pseudo-3": 3, "fixmatch": None, "fixmatch-off": None}
# with --fixmatch-set: the labeled set alone and the pool as FixMatch's; off: the same without the pool
FIXMATCH = {"fixmatch": ["train.unlabeled.weight=1"], "fixmatch-off": ["train.unlabeled.weight=0"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="fashion-mnist", help="ingest.source (digits: a quick smoke run)")
    ap.add_argument("--fractions", nargs="*", type=float, default=[0.01, 0.05])
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--set", nargs="*", default=[], help="more params for every row, key=value")
    ap.add_argument("--fixmatch-set", nargs="*", default=[], help="more params for the fixmatch row, key=value")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-pseudo-") as tmp:
        folder = Path(tmp)
        for name in ("pipeline", "augment_policies", "labels"):
            shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        for fraction in args.fractions:
            common = [f"ingest.source={args.source}", f"ingest.keep_labels={fraction}", "augment.enabled=false"]
            common += ["evaluate.robustness.max_samples=200", *args.set]
            params_file = folder / "params.yaml"
            params_file.write_text(yaml.safe_dump(with_sets(shipped, common), sort_keys=False))
            seconds = {name: stage(folder, name, params_file) for name in ("ingest", "split", "oof", "clean", "mine")}
            base = {"fraction": fraction, "set": common, "shared_seconds": seconds, "oof": metrics(folder, "oof")}
            print(f"{fraction:.0%} labels: {metrics(folder, 'split')}", flush=True)
            for row in args.rows:
                rounds = ROWS[row]
                derived, out = [], {**base, "row": row, "seconds": {}}
                row_sets = [f"pseudo.rounds={rounds}"] if rounds else []
                row_sets += [*args.fixmatch_set, *FIXMATCH[row]] if row in FIXMATCH else []
                params_file.write_text(yaml.safe_dump(with_sets(shipped, [*common, *row_sets]), sort_keys=False))
                if rounds:
                    out["seconds"]["pseudo"] = stage(folder, "pseudo", params_file)
                    out["pseudo"] = metrics(folder, "pseudo")
                    derived = ["data/pseudo"]
                for name in ("assemble", "train", "evaluate"):
                    out["seconds"][name] = stage(folder, name, params_file, derived)
                out["train"], out["evaluate"] = metrics(folder, "train"), metrics(folder, "evaluate")
                rounds_line = "; ".join(
                    f"round {r['round']}: kept {r['kept']} ({r['coverage']:.1%}), precision {r.get('precision')}, "
                    f"estimated {r['estimated_precision']}"
                    for r in out.get("pseudo", {}).get("rounds", [])
                )
                took = sum(out["seconds"].values())
                print(
                    f"{fraction:.0%} {row}: test accuracy {out['evaluate']['accuracy']} "
                    f"(n_train {out['train']['n_train']}, {took:.0f} s){'; ' if rounds_line else ''}{rounds_line}",
                    flush=True,
                )
                if "unlabeled" in out["train"]:
                    print(f"{fraction:.0%} {row}: FixMatch {out['train']['unlabeled']}", flush=True)
                results.append(out)
                if args.json:
                    args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
