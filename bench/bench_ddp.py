"""DDP on this machine: the train stage with train.nproc 2 vs 1, and the per-step cost of the all-reduce.

Usage (from the project root, on a quiet machine; Fashion-MNIST IDX files installed):
    .venv/bin/python bench/bench_ddp.py          # ~5 min on 2 cores

stage      `python -m pipeline train` on 20,000 Fashion-MNIST images (2,000 val), 3 epochs, batch 128,
           the small CNN, train.threads 0 (every core: one process takes both, two take one each),
           nproc 1 then 2, in one run: wall time (launch included), img/s, val accuracy.
allreduce  two gloo processes all-reduce a float32 tensor the size of the small CNN's gradients
           (72,666 values) 500 times: milliseconds per step, beside the measured step time.
Writes bench/ddp_results.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_split import ingest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.core import dataset  # noqa: E402

OUT = ROOT / "bench" / "ddp_results.json"
N_TRAIN, N_VAL, EPOCHS, PARAMS = 20_000, 2_000, 3, 72_666


def manifests(work: Path) -> tuple[Path, Path]:
    fm = ingest({"ingest": {"source": "fashion-mnist"}}, work / "fmnist")
    _, classes = dataset.read_manifest(work / "fmnist")
    train = fm[fm["source_split"] != "test"].iloc[: N_TRAIN + N_VAL]
    df = train.assign(split=["train"] * N_TRAIN + ["val"] * N_VAL, weight=1.0)
    dataset.write_manifest(df, work / "split" / dataset.MANIFEST, classes)
    dataset.write_manifest(df[df["split"] == "train"], work / "assemble" / dataset.MANIFEST, classes)
    return work / "split", work / "assemble"


def train(work: Path, split: Path, assemble: Path, nproc: int) -> dict:
    out = work / f"nproc{nproc}"
    out.mkdir()
    recipe = {"epochs": EPOCHS, "min_steps": 0, "patience": 100, "threads": 0, "nproc": nproc}
    (out / "params.yaml").write_text(yaml.safe_dump({"train": recipe, "augment": {"enabled": False}}))
    cmd = [sys.executable, "-m", "pipeline", "train", "--quiet", "--params", str(out / "params.yaml")]
    cmd += ["--assemble", str(assemble), "--split", str(split), "--oof", str(work / "no-oof")]
    cmd += ["--policy", "augment_policies/randaugment.yaml", "--unlabeled-policy", "augment_policies/randaugment.yaml"]
    cmd += ["--model", str(out / "model.pt"), "--metrics", str(out / "train.json"), "--plots", str(out / "plots")]
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    seconds = time.perf_counter() - t
    m = json.loads((out / "train.json").read_text())
    row = {"seconds": round(seconds, 1), "img_per_s": round(EPOCHS * N_TRAIN / seconds), **m}
    print(f"  train, nproc {nproc}: {seconds:6.1f} s, {row['img_per_s']} img/s, val {m['val_accuracy']}", flush=True)
    return row


def _allreduce(rank: int, port: int, steps: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    grad = torch.ones(PARAMS)
    for _ in range(20):
        dist.all_reduce(grad)
    dist.barrier()
    t = time.perf_counter()
    for _ in range(steps):
        dist.all_reduce(grad)
    if rank == 0:
        out.put((time.perf_counter() - t) / steps)
    dist.destroy_process_group()


def allreduce(steps: int = 500) -> float:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = 29500 + int(np.random.default_rng().integers(0, 1000))
    procs = [ctx.Process(target=_allreduce, args=(r, port, steps, q)) for r in range(2)]
    for p in procs:
        p.start()
    per_step = q.get()
    for p in procs:
        p.join()
    print(f"  all-reduce of {PARAMS:,} floats, 2 gloo processes: {per_step * 1e3:.2f} ms per step", flush=True)
    return per_step


def main() -> None:
    results = {"cpu_count": os.cpu_count(), "n_train": N_TRAIN, "epochs": EPOCHS, "batch_size": 128}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        split, assemble = manifests(work)
        results["stage"] = {n: train(work, split, assemble, n) for n in (1, 2)}
    per_step = allreduce()
    steps = EPOCHS * (N_TRAIN // 128)
    step_s = results["stage"][2]["seconds"] / steps
    results["allreduce_ms_per_step"] = round(per_step * 1e3, 3)
    results["ddp_step_ms"] = round(step_s * 1e3, 2)
    results["speedup"] = round(results["stage"][1]["seconds"] / results["stage"][2]["seconds"], 3)
    print(f"  DDP speed-up {results['speedup']}x; the all-reduce is {per_step / step_s:.0%} of a DDP step")
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
