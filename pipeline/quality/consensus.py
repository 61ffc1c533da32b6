"""One consensus label per sample from several annotators' answers, and each annotator's quality.

`consensus` aggregates an answers table (sample_id, annotator, label: one usable answer per sample
and annotator, e.g. `labelstudio.answers.answers` of a Label Studio export) with cleanlab's
multi-annotator CROWDLAB (consensus label, consensus quality, annotator quality), which needs
predicted class probabilities; without any, or with a single annotator, it falls back to a majority
vote (quality = agreement) and says so in `method`. No Label Studio is needed.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from pipeline.core import schema


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
