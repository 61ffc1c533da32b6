"""Shared by the Label Studio tests: a clean-stage-like manifest, and simulated annotators."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core import dataset
from pipeline.labelstudio import config

CLASSES = ["cat", "dog", "bird"]


def make_manifest(
    root: Path, n: int = 60, classes: list[str] = CLASSES, side: int = 8, issue_every: int = 2, pred_probs: bool = False
) -> Path:
    """A manifest shaped like the clean stage's output: every `issue_every`-th sample is a
    label issue whose suggested label is the next class; label_score rises with the index."""
    rng = np.random.default_rng(0)
    writer = dataset.ShardWriter(root / "images", shard_size=64)
    rows = []
    for i in range(n):
        label_id = i % len(classes)
        store, row = writer.add(rng.integers(0, 256, (side, side, 1), dtype=np.uint8))
        issue = i % issue_every == 0
        suggested = classes[(label_id + 1) % len(classes)] if issue else classes[label_id]
        rec = dict(
            sample_id=f"s{i:05d}",
            path=f"src/{i}.png",
            label=classes[label_id],
            label_id=label_id,
            split=["train", "val", "test"][i % 3],
            is_label_issue=issue,
            label_score=round(i / n, 4),
            suggested_label=suggested,
            store=store,
            row=row,
        )
        if pred_probs:
            p = np.full(len(classes), 0.1)
            p[classes.index(suggested)] = 0.8
            rec["probs"] = (p / p.sum()).tolist()  # artifacts.PROBS: out-of-fold probabilities
        rows.append(rec)
    writer.close()
    path = root / "manifest.parquet"
    dataset.write_manifest(pd.DataFrame(rows), path, classes)
    return path


def annotate(
    client,
    pid: int,
    annotators: list[int],
    classes: list[str] = CLASSES,
    skip_every: int = 0,
    unsure_every: int = 0,
    workers: int = 1,
) -> dict[str, str]:
    """Each annotator answers every task of the project: the first two always choose the
    suggested label, the third disagrees on every 4th sample (k % 4 == 1: the old label); every
    `skip_every`-th task gets a skip and every `unsure_every`-th (a multiple of 4) an "unsure"
    by annotator 0, so no sample loses its majority. With `workers` > 1 the annotators work
    at the same time, as people would. Returns the expected majority label per sample_id."""
    expected, jobs = {}, []
    for k, task in enumerate(sorted(client.export(pid), key=lambda t: t["data"]["sample_id"])):
        data = task["data"]
        want = data.get("suggested_label", data["label"])
        for j, user in enumerate(annotators):
            choice = want
            if j == 2 and k % 4 == 1:
                choice = data["label"]
            if j == 0 and unsure_every and k % unsure_every == 0:
                choice = config.UNSURE
            jobs.append((task["id"], config.choice_result(choice), user, False))
        if skip_every and k % skip_every == 0:
            jobs.append((task["id"], [], annotators[-1], True))
        expected[data["sample_id"]] = want
    with ThreadPoolExecutor(workers) as pool:
        list(
            pool.map(
                lambda job: client.create_annotation(job[0], job[1], completed_by=job[2], was_cancelled=job[3]), jobs
            )
        )
    return expected
