"""The scaling model: every stage's wall time and memory peak at 5k-70k Fashion-MNIST images, the
growth exponent per stage, and the projected wall time at 1M and 10M images on 1, 8 and 64 nodes.

Usage (from the project root, on a quiet machine; Fashion-MNIST IDX files installed):
    .venv/bin/python bench/bench_scaling.py                          # 5k, 10k, 20k, 70k: ~1.5 h on 2 cores
    .venv/bin/python bench/bench_scaling.py --sizes 5000 10000 --set train.epochs=2
    .venv/bin/python bench/bench_scaling.py --sizes 70000 --merge    # add a size to the JSON's others

For each size N, the first N images (train and test files cut in proportion) are written as IDX
files, a fresh copy of the project runs `dvc repro` one stage at a time (`--single-item`) under
`/usr/bin/time` (wall time, peak resident memory), with the default params plus --set. The
exponent k of each stage is fitted by least squares on log t ~ log N; the projection is
t(N) = t(70k) * (N / 70k)^k, divided by the parallelism a stage has across nodes (PARALLEL below:
what the stage's work is split over; 1 where it runs on one process). The assumptions are in
the JSON with the figures. Writes bench/scaling_results.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.core import catalog  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")
STAGES = catalog.STAGES
# how a stage's work divides across n nodes today: "samples" (Ray executor: ingest, augment,
# adversarial), "ddp" (train.nproc across nodes, efficiency 0.9 per doubling assumed), "folds"
# (at most oof.folds in parallel, were folds tasks), "queries" (the near-duplicate queries split,
# the index built once), 1: one process
PARALLEL = {
    "ingest": "samples", "augment": "samples", "adversarial": "samples", "train": "ddp", "oof": "folds",
    "split": "queries",
}  # fmt: skip
# stages that train for a fixed number of epochs once the data is large: below ~20k images the
# size-aware schedule (min_steps) sets their work, so the small sizes' exponent understates them;
# the projection takes at least 1 (linear) for them
TRAINING = {"oof", "train", "adversarial", "synthesize"}


def idx_subset(n: int, out: Path) -> Path:
    out.mkdir(parents=True)
    test_n = round(n / 7)  # Fashion-MNIST's own 60k / 10k proportion
    for prefix, count in (("train", n - test_n), ("t10k", test_n)):
        for kind, magic, header in (("images", 2051, 16), ("labels", 2049, 8)):
            raw = gzip.open(FMNIST / f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz").read()
            item = 784 if kind == "images" else 1
            head = bytearray(raw[:header])
            head[4:8] = count.to_bytes(4, "big")
            name = f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
            (out / name).write_bytes(bytes(head) + raw[header : header + count * item])
    return out


def run_size(n: int, work: Path, sets: list[str]) -> dict:
    project = work / f"n{n}"
    for name in ("pipeline", "augment_policies", "labels", "metrics/ablation.json", "dvc.yaml", "params.yaml"):
        src, dst = ROOT / name, project / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["PIPELINE_QUIET"] = "1"
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        subprocess.run(cmd, cwd=project, check=True, env=env)
    data = idx_subset(n, work / f"idx{n}")
    sets = ["ingest.source=fashion-mnist", f"ingest.path={data}", *sets]
    subprocess.run([sys.executable, "-c", _SET, *sets], cwd=project, check=True, env=env)
    row = {}
    for stage in STAGES:
        timing = project / f".{stage}.time"
        cmd = ["/usr/bin/time", "-f", "%e %M", "-o", str(timing), "dvc", "repro", "--single-item", stage]
        subprocess.run(cmd, cwd=project, check=True, env=env, stdout=subprocess.DEVNULL)
        seconds, kb = timing.read_text().split()[-2:]
        row[stage] = {"seconds": float(seconds), "peak_mb": round(int(kb) / 1024)}
        print(f"  {n:>6,} images, {stage:14s} {float(seconds):7.1f} s  {int(kb) / 1024:7.0f} MB", flush=True)
    return row


_SET = """
import sys, yaml
p = yaml.safe_load(open("params.yaml"))
for kv in sys.argv[1:]:
    key, value = kv.split("=", 1)
    *path, last = key.split(".")
    d = p
    for k in path:
        d = d.setdefault(k, {})
    d[last] = yaml.safe_load(value)
open("params.yaml", "w").write(yaml.safe_dump(p, sort_keys=False))
"""


def project(times: dict[int, dict], sizes: list[int]) -> dict:
    big = max(sizes)
    out = {}
    for stage in STAGES:
        t = np.array([times[n][stage]["seconds"] for n in sizes])
        k = float(np.polyfit(np.log(sizes), np.log(np.maximum(t, 1e-3)), 1)[0]) if len(sizes) > 1 else 1.0
        used = max(k, 1.0) if stage in TRAINING else k
        row = {"exponent": round(k, 2), "exponent_used": round(used, 2), "peak_mb_at_max": times[big][stage]["peak_mb"]}
        for target in (1_000_000, 10_000_000):
            single = times[big][stage]["seconds"] * (target / big) ** used
            for nodes in (1, 8, 64):
                kind = PARALLEL.get(stage)
                if kind == "folds":
                    div = min(nodes, 3)
                elif kind == "ddp":
                    div = nodes * 0.9 ** np.log2(nodes)
                elif kind in ("samples", "queries"):
                    div = nodes
                else:
                    div = 1
                row[f"{target // 1_000_000}M_{nodes}nodes_min"] = round(single / div / 60, 1)
        out[stage] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[5_000, 10_000, 20_000, 70_000])
    ap.add_argument("--set", nargs="*", default=[], help="params for every size, key=value")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "scaling_results.json")
    ap.add_argument("--merge", action="store_true", help="keep --out's times of the sizes not run now")
    args = ap.parse_args()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    commits = {str(n): head.stdout.strip() or None for n in args.sizes}
    with tempfile.TemporaryDirectory() as tmp:
        times = {n: run_size(n, Path(tmp), args.set) for n in args.sizes}
    if args.merge and args.out.exists():
        old = json.loads(args.out.read_text())
        kept = old["times"]
        times = {**{int(n): t for n, t in kept.items() if int(n) not in times}, **times}
        commits = {**{n: c for n, c in old.get("commits", {}).items() if int(n) not in args.sizes}, **commits}
        args.sizes = sorted(times)
        times = {n: times[n] for n in args.sizes}
    results = {
        "cpu_count": os.cpu_count(),
        "set": args.set,
        "times": {str(n): t for n, t in times.items()},
        "commits": {n: commits.get(n) for n in map(str, args.sizes)},  # the code each size was measured with
        "projection": project(times, args.sizes),
        "assumptions": {
            "parallel": PARALLEL,
            "ddp_efficiency_per_doubling": 0.9,
            "oof_folds": 3,
            "linear_at_scale": sorted(TRAINING),
        },
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
