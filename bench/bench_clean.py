"""Label-error detection under injected noise: our oof + clean stages vs the plain cleanlab recipe.

For each noise setting, in a project folder (a git clone of this repository with the venv on
PATH), runs `dvc exp run -S ... clean` (ingest, split, oof, clean with `clean.inject_noise`),
then, in this process and on the same noisy labels, the recipe of cleanlab's tutorials:
scikit-learn logistic regression on the pixels, `cross_val_predict` probabilities, default
`find_label_issues`. Both are scored on the train rows (the only ones corrupted) against the
kept truth. Also scores other `clean.issues.label.filter_by` choices on our oof probabilities
(cheap: no retraining), to show what the threshold choice is worth.

    python bench/bench_clean.py --project /tmp/fm --noise symmetric:0.1:0 symmetric:0.1:1 \\
        --set ingest.source=fashion-mnist oof.tta=true train.threads=2

A noise setting is `kind:rate:seed`; `pairwise:0.2:0:fmnist` swaps Fashion-MNIST's
shirt <-> T-shirt/top and pullover <-> coat. Writes `bench/clean_results.json`.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from pathlib import Path

import numpy as np

from pipeline.core import dataset

PAIRS = {"fmnist": "[[Shirt,T-shirt/top],[Pullover,Coat]]"}
FILTERS = [
    "prune_by_noise_rate",
    "prune_by_class",
    "both",
    "confident_learning",
    "predicted_neq_given",
    "low_self_confidence",
    "low_normalized_margin",
]


def scores(noisy: np.ndarray, found: np.ndarray) -> dict:
    tp = int((noisy & found).sum())
    p, r = tp / max(1, found.sum()), tp / max(1, noisy.sum())
    return {
        "flagged": int(found.sum()),
        "precision": round(p, 4),
        "recall": round(r, 4),
        "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
    }


def run_pipeline(project: Path, sets: list[str]) -> tuple[float, list[str], list[str]]:
    """Wall seconds of `dvc exp run -S ... clean`, the stages that ran, those restored."""
    cmd = ["dvc", "exp", "run", *[a for s in sets for a in ("-S", s)], "clean"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=project, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    ran = re.findall(r"Running stage '([^']+)'", proc.stdout)
    restored = re.findall(r"Stage '([^']+)' (?:is cached|didn't change)", proc.stdout)
    return seconds, ran, restored


def plain_cleanlab(x: np.ndarray, y: np.ndarray, seed: int, max_iter: int) -> np.ndarray:
    """The tutorial recipe: LR on pixels, 3-fold cross_val_predict, default find_label_issues."""
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    probs = cross_val_predict(LogisticRegression(max_iter=max_iter), x, y, cv=cv, method="predict_proba")
    return find_label_issues(y, probs, n_jobs=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, required=True, help="a clone of this repository")
    ap.add_argument("--noise", nargs="+", default=["symmetric:0.1:0", "symmetric:0.1:1"])
    ap.add_argument("--set", nargs="*", default=["ingest.source=fashion-mnist"], help="more -S params")
    ap.add_argument("--lr-max-iter", type=int, default=100)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("clean_results.json"))
    args = ap.parse_args()
    from cleanlab.filter import find_label_issues

    results = []
    for spec in args.noise:
        kind, rate, seed, *pairs = spec.split(":")
        sets = [
            *args.set,
            f"clean.inject_noise.kind={kind}",
            f"clean.inject_noise.rate={rate}",
            f"clean.inject_noise.seed={seed}",
        ]
        if pairs:
            sets.append(f"+clean.inject_noise.pairs={PAIRS[pairs[0]]}")  # + : not a key of params.yaml
        seconds, ran, restored = run_pipeline(args.project, sets)
        ours = json.loads((args.project / "metrics/clean.json").read_text())
        df, _ = dataset.read_manifest(args.project / "data/oof")
        pool = df["fold"].to_numpy() >= 0
        train = df["split"].to_numpy()[pool] == "train"
        y = df["label_id"].to_numpy(np.int64)[pool]
        noisy = (y != df["true_label_id"].to_numpy(np.int64)[pool])[train]
        probs = np.stack(df["probs"].to_numpy()[pool]).astype(np.float64)
        filters = {f: scores(noisy, find_label_issues(y, probs, filter_by=f, n_jobs=1)[train]) for f in FILTERS}
        x = dataset.load_pixels(df[pool]).reshape(int(pool.sum()), -1).astype(np.float32) / 255.0
        t0 = time.perf_counter()
        baseline = scores(noisy, plain_cleanlab(x, y, int(seed), args.lr_max_iter)[train])
        lr_seconds = time.perf_counter() - t0
        row = {
            "noise": spec,
            "params": sets,
            "noisy": int(noisy.sum()),
            "train": int(train.sum()),
            "ours": {k: ours["detection"][k] for k in ("flagged", "precision", "recall", "f1")},
            "filter_by": ours["filter_by"],
            "pipeline_seconds": round(seconds, 1),
            "stages_ran": ran,
            "stages_restored": restored,
            "plain_cleanlab_lr": baseline,
            "plain_cleanlab_seconds": round(lr_seconds, 1),
            "ours_other_filters": filters,
        }
        results.append(row)
        print(
            f"{spec}: {row['noisy']} noisy of {row['train']} train; ours ({row['filter_by']}) "
            f"P {row['ours']['precision']:.3f} R {row['ours']['recall']:.3f} F1 {row['ours']['f1']:.3f} "
            f"in {seconds:.0f} s (ran {ran}); plain cleanlab LR P {baseline['precision']:.3f} "
            f"R {baseline['recall']:.3f} F1 {baseline['f1']:.3f} in {lr_seconds:.0f} s",
            flush=True,
        )
        for f, s in filters.items():
            print(
                f"    our oof probs, filter_by={f:22s} P {s['precision']:.3f} R {s['recall']:.3f} "
                f"F1 {s['f1']:.3f} ({s['flagged']} flagged)",
                flush=True,
            )
        args.out.write_text(json.dumps(results, indent=1) + "\n")  # after each setting: hours of work
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
