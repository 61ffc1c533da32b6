"""clean: label issues, outliers, near-duplicates and class imbalance, found with cleanlab on
the oof stage's out-of-fold probabilities and embeddings; then the `clean.action`.

Writes `<out>/manifest.parquet`: every sample of the oof manifest (all splits, same order)
with, per issue type in `clean.issues`, `is_<issue>_issue` and `<issue>_score` (lower = more
severe), plus `suggested_label`, `given_label` (the label before any automatic action),
`human_label`/`label_patched` (the human patch), `needs_review` and `removed_reason`.

Order of decisions: human label patches (`labels/patches.csv`, kept in git) override labels first,
and a sample a human reviewed is never flagged again; an unlabeled (pool) sample a human labeled
joins train. The detectors see only labeled samples: the pool passes through unflagged, with the
ensemble's class as `suggested_label`. Automatic actions touch train only:
`remove` keeps the row with `split: removed` (so counts add up and stages that select train
skip it), `relabel` takes the suggested label where its probability is at least
`clean.relabel_threshold`. Val/test issues are only flagged (`needs_review`).
With `clean.inject_noise` on, metrics include detection precision/recall/F1 against the truth.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from pipeline.core import artifacts, dataset, schema, wiring
from pipeline.core import patches as label_patches
from pipeline.core.console import log
from pipeline.core.wiring import StageParams
from pipeline.quality import issues
from pipeline.render import gallery


def load_patches(path: str | Path, classes: list[str]) -> pd.DataFrame:
    """The human label patch at `path` (none when the file does not exist)."""
    return label_patches.read_patches(path, classes)


def detect(params: StageParams, df: pd.DataFrame, arrays: issues.OofArrays, classes: list[str]) -> pd.DataFrame:
    """The detectors' columns, found on the labeled rows (the image-quality detectors, which need no
    label, on every row); the unlabeled pool is never flagged by the others (its score columns are
    NaN) and gets the ensemble's class as `suggested_label`."""
    detectors = [issues.get(name, opts) for name, opts in params.clean.issues.items()]
    reviewed = (df[schema.HUMAN_LABEL] != "").to_numpy()
    labeled = np.flatnonzero(df[schema.LABEL_ID].to_numpy() >= 0)
    for d in detectors:
        rows = labeled if d.needs_labels else np.arange(len(df))  # image-quality issues: the pool too
        part = df.iloc[rows].reset_index(drop=True)
        found = d.find(part, issues.OofArrays(arrays.probs[rows], arrays.embeddings[rows])) if len(rows) else None
        found = pd.DataFrame({d.flag: []}) if found is None else found
        found[d.flag] = found[d.flag].astype(bool) & ~reviewed[rows]
        for c in found:
            df[c] = _spread(found[c].to_numpy(), rows, len(df))
    if "suggested_label_id" in df:
        pool = df[schema.LABEL_ID].to_numpy() < 0
        df.loc[pool, "suggested_label_id"] = arrays.probs[pool].argmax(1)
        df.loc[pool, "suggested_prob"] = arrays.probs[pool].max(1).round(6)
        df["suggested_label_id"] = df["suggested_label_id"].astype(np.int64)
        df["suggested_label"] = [classes[i] for i in df["suggested_label_id"]]
    return df


def _spread(values: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """`values` (of the rows `rows`) as a column of `n` rows: False, NaN or "" elsewhere."""
    if values.dtype == bool:
        out = np.zeros(n, bool)
    elif values.dtype.kind in "iuf":
        out = np.full(n, np.nan)
    else:
        out = np.full(n, "", dtype=object)
    out[rows] = values
    return out


def act(params: StageParams, df: pd.DataFrame, classes: list[str]) -> tuple[pd.DataFrame, dict]:
    cfg = params.clean
    train = (df[schema.SPLIT] == "train").to_numpy()
    flags = [c for c in df if c.startswith("is_") and c.endswith("_issue")]
    any_issue = df[flags].any(axis=1).to_numpy() if flags else np.zeros(len(df), bool)
    df["given_label"] = df[schema.LABEL]
    # keep the split stage's removals (e.g. near_duplicate_of_test) and their reasons
    upstream = (
        df[schema.REMOVED_REASON].fillna("").astype(str)
        if schema.REMOVED_REASON in df
        else pd.Series("", index=df.index)
    ).to_numpy()
    df[schema.REMOVED_REASON] = upstream
    counts = {"removed": 0, "relabeled": 0}
    if cfg.action == "remove":
        for name in cfg.remove_issues:
            hit = train & df[f"is_{name}_issue"].to_numpy() & (df[schema.REMOVED_REASON] == "").to_numpy()
            if name == "near_duplicate":  # of a pair, remove one: the one with the larger id
                hit &= (df[schema.SAMPLE_ID] > df["near_duplicate_of"]).to_numpy()
            df.loc[hit, schema.REMOVED_REASON] = f"{name}_issue"
        gone = (df[schema.REMOVED_REASON] != "").to_numpy() & (upstream == "")
        df.loc[gone, schema.SPLIT] = "removed"
        counts["removed"] = int(gone.sum())
    elif cfg.action == "relabel" and schema.IS_LABEL_ISSUE in df:
        confident = (df["suggested_prob"] >= cfg.relabel_threshold).to_numpy()
        hit = (
            train
            & df[schema.IS_LABEL_ISSUE].to_numpy()
            & confident
            & (df["suggested_label_id"] != df[schema.LABEL_ID]).to_numpy()
        )
        df.loc[hit, schema.LABEL_ID] = df.loc[hit, "suggested_label_id"]
        df.loc[hit, schema.LABEL] = [classes[i] for i in df.loc[hit, schema.LABEL_ID]]
        counts["relabeled"] = int(hit.sum())
    acted = ((df[schema.REMOVED_REASON] != "").to_numpy() & (upstream == "")) | (
        df[schema.LABEL] != df["given_label"]
    ).to_numpy()
    df["needs_review"] = any_issue & ~acted
    return df, counts


def detection(df: pd.DataFrame) -> dict:
    """Precision/recall/F1 of `is_label_issue` against injected noise, on train."""
    removed_here = df[schema.REMOVED_REASON].astype(str).str.endswith("_issue")  # by clean, not by split
    train = (((df[schema.SPLIT] == "train") | removed_here) & (df[schema.HUMAN_LABEL] == "")).to_numpy()
    noisy = (df["given_label"] != df[schema.TRUE_LABEL]).to_numpy()[train]
    found = df[schema.IS_LABEL_ISSUE].to_numpy()[train]
    tp = int((noisy & found).sum())
    p = tp / max(1, found.sum())
    r = tp / max(1, noisy.sum())
    out = {
        "noisy": int(noisy.sum()),
        "flagged": int(found.sum()),
        "precision": round(p, 6),
        "recall": round(r, 6),
        "f1": round(2 * p * r / (p + r), 6) if p + r else 0.0,
    }
    fixed = df[df[schema.LABEL] != df["given_label"]]
    if len(fixed):
        out["relabel_accuracy"] = round(float((fixed[schema.LABEL] == fixed[schema.TRUE_LABEL]).mean()), 6)
    return out


class Result(NamedTuple):
    samples: pd.DataFrame  # the manifest with each issue's flag and score, after clean.action
    metrics: dict


def run(
    params: StageParams, oof_df: pd.DataFrame, emb: np.ndarray, classes: list[str], patches: pd.DataFrame
) -> Result:
    df, patch_counts = label_patches.apply_patches(oof_df.reset_index(drop=True), patches, classes)
    # a pool sample a person labeled joins train (val and test stay fixed, so rounds stay comparable)
    joined = ((df[schema.SPLIT] == schema.POOL) & (df[schema.HUMAN_LABEL] != "")).to_numpy()
    df.loc[joined, schema.SPLIT] = "train"
    patch_counts["pool_to_train"] = int(joined.sum())
    probs = np.stack(df[schema.PROBS].to_numpy()).astype(np.float64)
    df = detect(params, df.drop(columns=["probs"]), issues.OofArrays(probs, emb), classes)
    found = {}
    for name in params.clean.issues:
        flag = df[f"is_{name}_issue"]
        found[name] = {s: int(flag[df[schema.SPLIT] == s].sum()) for s in ("train", "val", "test")}
        found[name]["total"] = int(flag.sum())
    df, action_counts = act(params, df, classes)
    metrics = {
        "action": params.clean.action,
        "unlabeled": int((df[schema.SPLIT] == schema.POOL).sum()),
        "patches": patch_counts,
        **action_counts,
        "needs_review": int(df["needs_review"].sum()),
        "issues": found,
    }
    pool = df[schema.FOLD].to_numpy() >= 0
    metrics["oof_accuracy"] = (
        round(float((probs[pool].argmax(1) == df[schema.LABEL_ID].to_numpy()[pool]).mean()), 6) if pool.any() else None
    )
    metrics["oof_trusted"] = (
        metrics["oof_accuracy"] is not None and metrics["oof_accuracy"] >= params.clean.min_oof_accuracy
    )
    metrics["flag_rates"] = {name: round(c["total"] / max(len(df), 1), 6) for name, c in found.items()}
    if schema.IS_LABEL_ISSUE in df:
        metrics["estimated_noise_rate"] = round(float(df[schema.IS_LABEL_ISSUE].to_numpy()[pool].mean()), 6)
        metrics["filter_by"] = issues.get("label", params.clean.issues["label"]).knobs.filter_by
        if schema.TRUE_LABEL in df and (df[schema.TRUE_LABEL] != df["given_label"]).any():
            metrics["detection"] = detection(df)
    return Result(df, metrics)


def label_issue_gallery(df: pd.DataFrame, n: int):
    top = df[df[schema.IS_LABEL_ISSUE]].sort_values("label_score", kind="stable").head(n)
    caps = [f"{g} ->\n{s}\n{q:.3f}" for g, s, q in zip(top["given_label"], top["suggested_label"], top["label_score"])]
    title = "top label issues: given -> suggested, label score"
    return gallery.grid(
        dataset.load_pixels(top) if len(top) else np.zeros((0, 8, 8, 1), np.uint8), caps, cols=8, title=title
    )


STAGE = wiring.Stage(
    "clean",
    reads=(wiring.Flag("--oof", "oof output"), wiring.Flag("--labels", "the human label patch, kept in git")),
    writes=(wiring.Flag("--out", "output folder"),),
    params=("base", "clean"),
)


def main(params: StageParams, args: argparse.Namespace) -> None:
    oof_df, classes, emb, _ = artifacts.read_oof(args.oof)
    df, metrics = run(params, oof_df, emb, classes, load_patches(args.labels, classes))
    out = Path(args.out)
    with dataset.staged_dir(out) as tmp:
        dataset.write_manifest(df, tmp / dataset.MANIFEST, classes, final_dir=out)
    dataset.write_json(args.metrics, metrics)
    if schema.IS_LABEL_ISSUE in df:
        gallery.save(label_issue_gallery(df, params.clean.gallery), Path(args.plots) / "label_issues.png")
    log.info(
        "clean: %s; %d removed, %d relabeled, %d to review",
        metrics["issues"],
        metrics["removed"],
        metrics["relabeled"],
        metrics["needs_review"],
    )
    for line in warnings(params, metrics):
        log.warning("%s", line)


def warnings(params: StageParams, metrics: dict) -> list[str]:
    """One line for each figure that says the flags should not be trusted as they are."""
    out = []
    if not metrics["oof_trusted"] and metrics["oof_accuracy"] is not None:
        out.append(
            f"clean: the oof models are weak (out-of-fold accuracy {metrics['oof_accuracy']:.2f} < "
            f"clean.min_oof_accuracy {params.clean.min_oof_accuracy:.2f}): their label and outlier "
            "flags are not to be trusted; more images per class or more oof epochs help"
        )
    for name, rate in metrics["flag_rates"].items():
        if rate > params.clean.max_flag_rate:
            out.append(
                f"clean: {name} flags {metrics['issues'][name]['total']} samples ({rate:.0%}), far above "
                f"any plausible rate (clean.max_flag_rate {params.clean.max_flag_rate:.0%}): "
                f"check clean.issues.{name} for this data"
            )
    return out
