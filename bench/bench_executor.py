"""Ingest + augment on 70,000 Fashion-MNIST images as PNG files: the local executor vs Ray, in one run.

Usage (from the project root, on a quiet machine; Fashion-MNIST IDX files installed, the ray extra):
    .venv/bin/python bench/bench_executor.py             # ~10 min on 2 cores
    .venv/bin/python bench/bench_executor.py --n 10000   # a smaller folder

The images are written once as an image folder (so ingest decodes files, the work the executor
spreads), then ingest and augment (RandAugment, one copy of each image, all as train) run with
`base.executor: local` and then `ray` (a local Ray with this machine's cores, started and
stopped by each stage: start-up included). Prints wall times and checks the outputs are the same
bytes. Writes bench/executor_results.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.core import dataset  # noqa: E402
from pipeline.core.params import Ingest  # noqa: E402
from pipeline.sources import readers as sources  # noqa: E402

OUT = ROOT / "bench" / "executor_results.json"


def folder(root: Path, n: int) -> Path:
    items, classes = sources.SOURCES["fashion-mnist"](Ingest(source="fashion-mnist"))
    for i, it in enumerate(items[:n]):
        d = root / it.label
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(it.pixels.reshape(it.pixels.shape[:2])).save(d / f"{i:05d}.png")
    return root


def stage(name: str, params: Path, **flags) -> float:
    cmd = [sys.executable, "-m", "pipeline", name, "--quiet", "--params", str(params)]
    cmd += [str(v) for kv in flags.items() for v in kv]
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.perf_counter() - t


def digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(path).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def run(work: Path, images: Path, executor: str) -> dict:
    out = work / executor
    out.mkdir()
    params = {"base": {"executor": executor}, "ingest": {"source": "imagefolder", "path": str(images)}}
    params["augment"] = {"preview": 0}
    (out / "params.yaml").write_text(yaml.safe_dump(params))
    t_ingest = stage("ingest", out / "params.yaml", **{"--out": out / "ingest", "--metrics": out / "ingest.json"})
    df, classes = dataset.read_manifest(out / "ingest")
    dataset.write_manifest(df.assign(split="train"), out / "split" / dataset.MANIFEST, classes)
    flags = {"--clean": out / "split", "--policy": ROOT / "augment_policies/randaugment.yaml"}
    flags |= {"--out": out / "augment", "--metrics": out / "augment.json", "--plots": out / "plots"}
    t_augment = stage("augment", out / "params.yaml", **flags)
    row = {"ingest_s": round(t_ingest, 1), "augment_s": round(t_augment, 1), "images": len(df)}
    row |= {"ingest_sha256": digest(out / "ingest"), "augment_sha256": digest(out / "augment")}
    print(f"  {executor:5s}: ingest {t_ingest:6.1f} s, augment {t_augment:6.1f} s", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=70_000)
    args = ap.parse_args()
    results = {"cpu_count": os.cpu_count(), "n": args.n}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = folder(work / "images", args.n)
        for executor in ("local", "ray"):
            results[executor] = run(work, images, executor)
    local, ray = results["local"], results["ray"]
    results["same_bytes"] = all(local[k] == ray[k] for k in ("ingest_sha256", "augment_sha256"))
    print(f"  same bytes: {results['same_bytes']}")
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
