"""The whole default `dvc repro` on a user's folder, with planted label noise: wall time of each
stage, label-issue F1 and test accuracy, for the shipped params and, in the same run, a
baseline (the same with `--baseline` overrides, e.g. the defaults of an earlier round):

    python bench/tinted_folder.py /data/tint1500 --n 1500
    python bench/bench_default_repro.py /data/tint1500 --baseline oof.image_size=null \\
        --json bench/default_repro_tint1500.json

Each run is a scratch git repository with this checkout's pipeline, dvc.yaml and params copied
in (editing the tree during a run changes nothing), ingest pointed at the folder and
`clean.inject_noise` on (10% symmetric by default), then `dvc repro` as a user runs it. Stage
times come from `.pipeline/stage_times.json`; the total is the `dvc repro` wall time, DVC's
own work included. Run it on a quiet machine: one heavy job at a time.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_oof_clean import finish, with_sets  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("pipeline", "augment_policies", "labels", "metrics/ablation.json", "dvc.yaml", ".dvcignore", ".gitignore")


def setup(folder: Path, params: dict) -> None:
    """A fresh git repository in `folder` holding the project and these params."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        src, dst = ROOT / name, folder / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    (folder / ".dvc").mkdir(parents=True)
    shutil.copy(ROOT / ".dvc/config", folder / ".dvc/config")
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
    subprocess.run(["git", "add", "-A"], cwd=folder, check=True)
    subprocess.run([*git, "commit", "-qm", "bench"], cwd=folder, check=True)


def repro(folder: Path, params: dict) -> dict:
    """`dvc repro` in a fresh repository: seconds per stage and the figures."""
    setup(folder, params)
    env = {**os.environ, "PIPELINE_QUIET": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(["dvc", "repro", "-q"], cwd=folder, env=env, capture_output=True, text=True)
    total = round(time.perf_counter() - t0, 1)
    if proc.returncode:
        errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
        sys.exit(f"dvc repro failed in {folder} (kept):\n" + "\n".join(errors[-20:] or [proc.stderr[-3000:]]))
    metric = lambda stem: json.loads((folder / "metrics" / f"{stem}.json").read_text())  # noqa: E731
    clean, oof, evaluate = metric("clean"), metric("oof"), metric("evaluate")
    return {
        "total_seconds": total,
        "seconds": json.loads((folder / ".pipeline/stage_times.json").read_text()),
        "detection": clean.get("detection"),
        "oof_accuracy": oof.get("oof_accuracy"),
        "oof_epochs": oof.get("epochs"),
        "test_accuracy": evaluate.get("accuracy"),
        "train_epochs": metric("train").get("epochs_run"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="an image folder, root/<class>/<image>")
    ap.add_argument("--noise", default="symmetric:0.1:0", help="kind:rate:seed of clean.inject_noise")
    ap.add_argument("--set", nargs="*", default=[], help="more params for both runs, key=value")
    ap.add_argument("--baseline", nargs="*", default=None, help="overrides that make the baseline, key=value")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    kind, rate, seed = args.noise.split(":")
    common = ["ingest.source=imagefolder", f"ingest.path={args.folder.resolve()}"]
    common += [f"clean.inject_noise.kind={kind}", f"clean.inject_noise.rate={rate}", f"clean.inject_noise.seed={seed}"]
    common += args.set
    runs = {"default": []} | ({"baseline": args.baseline} if args.baseline is not None else {})
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    results = {}
    for run, sets in runs.items():
        folder = Path(tempfile.mkdtemp(prefix=f"bench-repro-{run}-"))
        r = repro(folder, with_sets(shipped, common + sets))
        shutil.rmtree(folder)  # kept when the run fails
        results[run] = {"overrides": sets, **r}
        d = r["detection"] or {}
        stages = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["seconds"].items(), key=lambda kv: -kv[1]))
        print(
            f"{run}: dvc repro {r['total_seconds']:.0f} s ({r['total_seconds'] / 60:.1f} min), label-issue F1 "
            f"{d.get('f1')} (P {d.get('precision')}, R {d.get('recall')}), oof accuracy {r['oof_accuracy']}, "
            f"test accuracy {r['test_accuracy']}\n  seconds per stage: {stages}",
            flush=True,
        )
    finish(
        results,
        args.json,
        {"folder": str(args.folder), "noise": args.noise, "set": args.set, "threads": os.cpu_count()},
    )


if __name__ == "__main__":
    main()
