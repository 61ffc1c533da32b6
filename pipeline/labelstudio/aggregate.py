"""From exported Label Studio tasks to one consensus label per sample.

`answers` flattens the export into one usable answer per (sample, annotator), counting what
it drops: skipped (cancelled) annotations, "unsure" answers, empty results and choices that
are not classes. `consensus` aggregates them with cleanlab's multi-annotator CROWDLAB
(consensus label, consensus quality, annotator quality), which needs predicted class
probabilities; without any, or with a single annotator, it falls back to a majority vote
(quality = agreement) and says so in `method`.
"""

from __future__ import annotations

import warnings

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


def consensus(
    ans: pd.DataFrame, classes: list[str], pred_probs: np.ndarray | None
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(per sample: sample_id, label, consensus_quality, annotators, agreement;
    per annotator: annotator, quality, agreement, labeled; the method used).

    `pred_probs` rows follow the sorted unique sample ids of `ans`.
    """
    samples = np.sort(ans[schema.SAMPLE_ID].unique())
    annotators = np.sort(ans["annotator"].unique())
    index = {c: i for i, c in enumerate(classes)}
    matrix = (
        ans.assign(y=ans[schema.LABEL].map(index))
        .pivot(index="sample_id", columns="annotator", values="y")
        .reindex(index=samples, columns=annotators)
        .astype(float)
    )
    votes = np.zeros((len(samples), len(classes)))
    for j in range(matrix.shape[1]):
        col = matrix.iloc[:, j].to_numpy()
        ok = ~np.isnan(col)
        votes[np.nonzero(ok)[0], col[ok].astype(int)] += 1
    n = votes.sum(1)
    method = "crowdlab"
    if pred_probs is None:
        method = "majority_vote (no predicted probabilities)"
    elif len(annotators) < 2:
        method = "majority_vote (a single annotator)"
    if method == "crowdlab":
        from cleanlab.multiannotator import get_label_quality_multiannotator

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = get_label_quality_multiannotator(
                matrix, np.asarray(pred_probs, float), verbose=False, return_detailed_quality=False
            )
        lq, stats = out["label_quality"], out["annotator_stats"]
        label = lq["consensus_label"].to_numpy().astype(int)
        quality = lq["consensus_quality_score"].to_numpy()
        ann = pd.DataFrame(
            {
                "annotator": stats.index.astype(str),
                "quality": stats["annotator_quality"].to_numpy(),
                "agreement": stats["agreement_with_consensus"].to_numpy(),
                "labeled": stats["num_examples_labeled"].to_numpy(),
            }
        )
    else:
        tie_break = votes + (1e-6 * np.asarray(pred_probs) if pred_probs is not None else 0)
        label = tie_break.argmax(1)  # remaining ties: the first class in class-list order
        quality = votes[np.arange(len(samples)), label] / n
        agree = matrix.to_numpy() == label[:, None]
        labeled = ~np.isnan(matrix.to_numpy())
        ann = pd.DataFrame(
            {
                "annotator": annotators.astype(str),
                "quality": (agree & labeled).sum(0) / labeled.sum(0),
                "agreement": (agree & labeled).sum(0) / labeled.sum(0),
                "labeled": labeled.sum(0),
            }
        )
    per_sample = pd.DataFrame(
        {
            "sample_id": samples,
            "label": np.asarray(classes, dtype=object)[label],
            "consensus_quality": quality.astype(float),
            "annotators": n.astype(int),
            "agreement": votes[np.arange(len(samples)), label] / n,
        }
    )
    return per_sample, ann.sort_values("annotator").reset_index(drop=True), method


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
