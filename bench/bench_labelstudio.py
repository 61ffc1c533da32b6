"""Push 10,000 tasks to a local Label Studio and pull 10,000 annotated tasks back, timed.

Starts its own server from `.venv-ls` (`make labelstudio`) on 127.0.0.1 with a scratch
database (its first start, about a minute, is not timed), then times:
  push     10,000 new samples: PNGs written, local-files storage, tasks with predictions
  re-push  the same 10,000 again (idempotent: lists the project, imports nothing)
  pull     a project of 10,000 tasks x 3 annotators: export, CROWDLAB consensus, patch
The pull project's 30,000 annotations are loaded with the tasks through the import API:
creating them one by one through the annotation endpoint takes 0.1-0.3 s each here.
Targets (the issue): push <= 60 s, pull <= 30 s.

Usage: .venv/bin/python bench/bench_labelstudio.py [--n 10000]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PIPELINE_QUIET", "1")

from pipeline.core import console, dataset  # noqa: E402
from pipeline.labelstudio import config, pull, push, serve  # noqa: E402
from pipeline.labelstudio.client import Client  # noqa: E402

CLASSES = [f"class{i}" for i in range(10)]


def manifest(folder: Path, n: int) -> tuple[pd.DataFrame, Path]:
    rng = np.random.default_rng(0)
    writer = dataset.ShardWriter(folder / "images")
    rows = []
    for i in range(n):
        store, row = writer.add(rng.integers(0, 256, (28, 28, 1), dtype=np.uint8))
        y = i % len(CLASSES)
        rows.append(
            dict(
                sample_id=f"b{i:06d}",
                path=f"bench/{i}",
                label=CLASSES[y],
                label_id=y,
                split="train",
                is_label_issue=True,
                label_score=round(rng.random(), 4),
                suggested_label=CLASSES[(y + 1) % len(CLASSES)],
                store=store,
                row=row,
            )
        )
    writer.close()
    path = folder / "manifest.parquet"
    dataset.write_manifest(pd.DataFrame(rows), path, CLASSES)
    return dataset.read_manifest(path)[0], path


def annotated_tasks(df: pd.DataFrame, users: list[int]) -> list[dict]:
    tasks = []
    for k, r in enumerate(df.itertuples()):
        answers = [r.suggested_label, r.suggested_label, r.label if k % 4 == 1 else r.suggested_label]
        tasks.append(
            {
                "data": {
                    "image": f"/data/local-files/?d=x/{r.sample_id}.png",
                    "sample_id": r.sample_id,
                    "label": r.label,
                },
                "annotations": [{"completed_by": u, "result": config.choice_result(a)} for u, a in zip(users, answers)],
                "predictions": [push.prediction(r.suggested_label, 0.7, "bench")],
            }
        )
    return tasks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    n = ap.parse_args().n
    console.setup(quiet=True)
    if not serve.executable(ROOT / ".venv-ls").exists():
        sys.exit("bench: .venv-ls/bin/label-studio is missing: run `make labelstudio`")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        docroot = base / "docroot"
        work = docroot / "project"
        work.mkdir(parents=True)
        token, port = secrets.token_hex(20), serve.free_port()
        proc = serve.start(
            port,
            base / "ls",
            docroot,
            token,
            secrets.token_hex(8),
            venv=ROOT / ".venv-ls",
            log_path=base / "server.log",
        )
        try:
            t = time.monotonic()
            serve.wait_ready(port, proc)
            print(f"server start (not timed): {time.monotonic() - t:.0f} s")
            client = Client(f"http://{serve.HOST}:{port}", token)
            df, path = manifest(work / "data" / "clean", n)
            os.chdir(work)
            opts = push.PushOptions(
                project="bench-push", image_dir=work / ".pipeline/label-images", model_version="bench+00000000"
            )
            t = time.monotonic()
            counts = push.run(client, df, CLASSES, opts)
            t_push = time.monotonic() - t
            assert counts["created"] == n, counts
            t = time.monotonic()
            again = push.run(client, df, CLASSES, opts)
            t_repush = time.monotonic() - t
            assert again["created"] == 0 and again["predictions_refreshed"] == 0, again

            users = [client.create_user(f"bench{i}@example.com")["id"] for i in range(3)]
            project = client.create_project(
                title="bench-pull", label_config=config.labeling_config(CLASSES), maximum_annotations=3
            )
            tasks = annotated_tasks(df, users)
            for start in range(0, n, 1000):
                client.import_tasks(project["id"], tasks[start : start + 1000])
            t = time.monotonic()
            patch, summary = pull.run(
                client, pull.PullOptions(project="bench-pull", dvc=False, summary=None), df, CLASSES
            )
            t_pull = time.monotonic() - t
            assert len(patch) == n and summary["method"] == "crowdlab", summary
        finally:
            serve.stop(proc)
    print(f"push    {n:6d} tasks: {t_push:6.1f} s   (target <= 60 s)  {n / t_push:6.0f} tasks/s")
    print(f"re-push {n:6d} tasks: {t_repush:6.1f} s   (0 created, 0 refreshed)")
    print(f"pull    {n:6d} tasks: {t_pull:6.1f} s   (target <= 30 s)  {3 * n} annotations, CROWDLAB")


if __name__ == "__main__":
    main()
