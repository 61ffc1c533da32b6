"""Fashion-MNIST ingest -> split -> oof -> clean: wall time per stage and label-issue F1 under
injected noise (10% symmetric by default), for the default params and, in the same run, a
baseline (the same with `--baseline` overrides), sharing the ingest and split outputs.

    python bench/bench_oof_clean.py                                   # defaults only
    python bench/bench_oof_clean.py --baseline oof.tta=true oof.epochs=8 --json bench/oof_clean_results.json

Each stage runs as `python -m pipeline <stage>` (as dvc.yaml runs it) in a scratch folder with
this checkout's `pipeline/` copied in, so editing the tree during a run changes nothing. Run it
on a quiet machine: one heavy job at a time. It reports seconds per stage, the
ingest -> clean total, and detection precision / recall / F1 on the train rows.
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

ROOT = Path(__file__).resolve().parents[1]
FLAGS = {
    "ingest": ["--out", "data/ingest", "--metrics", "metrics/ingest.json"],
    "split": [
        "--ingest",
        "data/ingest",
        "--embed",
        "data/embed",
        "--out",
        "data/split",
        "--metrics",
        "metrics/split.json",
    ]
    + ["--plots", "plots/split"],
    "oof": ["--split", "data/split", "--embed", "data/embed", "--labels", "labels/patches.csv", "--out", "data/oof"]
    + ["--metrics", "metrics/oof.json"],
    "clean": ["--oof", "data/oof", "--labels", "labels/patches.csv", "--out", "data/clean"]
    + ["--metrics", "metrics/clean.json", "--plots", "plots/clean"],
}


def with_sets(params: dict, sets: list[str]) -> dict:
    params = json.loads(json.dumps(params))
    for s in sets:
        key, value = s.split("=", 1)
        *path, last = key.split(".")
        node = params
        for part in path:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    return params


def stage(folder: Path, name: str, params_file: Path) -> float:
    env = {**os.environ, "PIPELINE_QUIET": "1"}
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "pipeline", name, "--quiet", "--params", str(params_file), *FLAGS[name]]
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return round(time.perf_counter() - t0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--noise", default="symmetric:0.1:0", help="kind:rate:seed of clean.inject_noise")
    ap.add_argument("--set", nargs="*", default=[], help="more params for both runs, key=value")
    ap.add_argument("--baseline", nargs="*", default=None, help="overrides that make the baseline, key=value")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    kind, rate, seed = args.noise.split(":")
    common = ["ingest.source=fashion-mnist", f"clean.inject_noise.kind={kind}", f"clean.inject_noise.rate={rate}"]
    common += [f"clean.inject_noise.seed={seed}", *args.set]
    runs = {"default": []} | ({"baseline": args.baseline} if args.baseline is not None else {})
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-oof-clean-") as tmp:
        folder = Path(tmp)
        for name in ("pipeline", "augment_policies", "labels"):
            shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        shared = {}
        for run, sets in runs.items():
            params_file = folder / f"params-{run}.yaml"
            params_file.write_text(yaml.safe_dump(with_sets(shipped, common + sets), sort_keys=False))
            seconds = {}
            for name in ("ingest", "split"):  # the same for both runs: run once, count in each
                shared.setdefault(name, stage(folder, name, params_file))
                seconds[name] = shared[name]
            for name in ("oof", "clean"):
                seconds[name] = stage(folder, name, params_file)
            clean = json.loads((folder / "metrics/clean.json").read_text())
            oof = json.loads((folder / "metrics/oof.json").read_text())
            total = round(sum(seconds.values()), 1)
            results[run] = {
                "overrides": sets,
                "seconds": seconds,
                "total_seconds": total,
                "detection": clean.get("detection"),
                "oof_accuracy": oof.get("oof_accuracy"),
                "oof_epochs": oof.get("epochs"),
                "threads": oof.get("threads"),
            }
            d = clean.get("detection") or {}
            print(
                f"{run}: {total:.0f} s ({total / 60:.1f} min; {seconds}), label-issue F1 {d.get('f1')} "
                f"(P {d.get('precision')}, R {d.get('recall')}), oof accuracy {oof.get('oof_accuracy')}",
                flush=True,
            )
    finish(results, args.json, {"noise": args.noise, "set": args.set})


def finish(results: dict, path: Path | None, meta: dict) -> None:
    """The default's speed-up over the baseline, and the JSON file (meta + runs) if asked for."""
    if "baseline" in results:
        ratio = results["baseline"]["total_seconds"] / results["default"]["total_seconds"]
        print(f"default is {ratio:.2f}x as fast as the baseline")
    if path:
        path.write_text(json.dumps({**meta, "runs": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
