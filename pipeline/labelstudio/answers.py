"""From exported Label Studio tasks to the answers table `quality.consensus` aggregates.

`answers` flattens the export into one usable answer per (sample, annotator), counting what
it drops: skipped (cancelled) annotations, "unsure" answers, empty results and choices that
are not classes. `probs_from_predictions` turns the predictions pushed with the tasks into
class probabilities, for CROWDLAB when the project has no out-of-fold ones.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.core import schema
from pipeline.labelstudio import config


def _annotator(completed_by) -> str:
    if isinstance(completed_by, dict):
        completed_by = completed_by.get("id", completed_by.get("email"))
    return str(completed_by)


def answers(tasks: list[dict], classes: list[str]) -> tuple[pd.DataFrame, dict]:
    """One row per (sample_id, annotator): their latest usable answer; plus drop counts."""
    counts = dict(
        tasks=len(tasks), annotations=0, skipped=0, unsure=0, empty=0, not_a_class=0, tasks_without_sample_id=0
    )
    known = set(classes)
    rows = []
    for task in tasks:
        sid = (task.get("data") or {}).get("sample_id")
        if sid is None:
            counts["tasks_without_sample_id"] += 1
            continue
        for a in task.get("annotations") or []:
            counts["annotations"] += 1
            if a.get("was_cancelled"):
                counts["skipped"] += 1
                continue
            chosen = [
                c
                for r in a.get("result") or []
                if r.get("from_name") == config.FROM_NAME
                for c in (r.get("value") or {}).get("choices", [])
            ]
            if not chosen:
                counts["empty"] += 1
            elif chosen[0] == config.UNSURE:
                counts["unsure"] += 1
            elif chosen[0] not in known:
                counts["not_a_class"] += 1
            else:
                rows.append((str(sid), _annotator(a.get("completed_by")), chosen[0], a.get("id") or 0))
    df = pd.DataFrame(rows, columns=["sample_id", "annotator", "label", "annotation_id"])
    df = (
        df.sort_values([schema.SAMPLE_ID, "annotator", "annotation_id"], kind="stable")
        .drop_duplicates([schema.SAMPLE_ID, "annotator"], keep="last")
        .reset_index(drop=True)
    )
    counts["usable"] = int(len(df))
    return df, counts


def probs_from_predictions(
    predictions: list[dict], task_sample: dict[int, str], samples: np.ndarray, classes: list[str]
) -> tuple[np.ndarray | None, int]:
    """ "One-hot-ish" probabilities from the pushed predictions (the latest per task): the
    score on the suggested class, the rest spread evenly; uniform for a sample that had none.
    None when no sample had one."""
    k = len(classes)
    found: dict[str, tuple[int, np.ndarray]] = {}
    for p in predictions:
        sid = task_sample.get(p.get("task"))
        chosen = [
            c
            for r in p.get("result") or []
            if r.get("from_name") == config.FROM_NAME
            for c in (r.get("value") or {}).get("choices", [])
        ]
        if sid is None or not chosen or chosen[0] not in classes or p.get("score") is None:
            continue
        score = float(np.clip(p["score"], 1.0 / k, 1.0 - 1e-3))
        row = np.full(k, (1.0 - score) / (k - 1)) if k > 1 else np.ones(1)
        row[classes.index(chosen[0])] = score
        if sid not in found or p.get("id", 0) >= found[sid][0]:
            found[sid] = (p.get("id", 0), row)
    if not found:
        return None, 0
    out = np.array([found[s][1] if s in found else np.full(k, 1.0 / k) for s in samples])
    return out, int(sum(s in found for s in samples))
