"""pseudo: labels for the unlabeled pool from the models, kept only where they can be trusted.

The course's semi-supervised recipe: train several CNNs on the labeled data (the oof stage's
fold models), label the unlabeled data with the ensemble, train on both; then iterate (teacher ->
student -> teacher: Noisy Student, Xie et al. 2020). Round 1's teacher is the oof ensemble (the
mean of the fold models' probabilities, with TTA as oof ran it). Each later round trains a
student from scratch on the labeled train samples plus the last round's pseudo-labels, under
noise (random shifts, and train's mixing and random erasing when they are on) and early stopping
on val, and the student is the next teacher. With `train.soft_labels` the student's targets mix
in the teacher's probabilities (oof's out-of-fold ones for labeled samples), as train's do.

A teacher's pseudo-label is kept when it passes every rule, in this order (a dropped sample is
counted under the first rule it fails, so pool = kept + the drops):

- `below_class_threshold`: per predicted class, only the most confident `portion` of the pool
  predicted as that class (raised by `portion_step` each round: curriculum labeling), and never
  below the confidence floor: the lowest confidence above which the teacher's predictions of
  labeled samples are `precision` right (out-of-fold train predictions in round 1, val after), nor
  `min_confidence`. Per-class cut-offs keep easy classes from crowding out hard ones.
- `ensemble_disagrees`: fewer than `min_agreement` of the fold models vote for the class (the
  ensemble round only: a student is one model).
- `neighbours_disagree`: the majority label of the `neighbours` nearest labeled train samples in
  the oof embedding space is another class (label consistency with the labeled data).
- `duplicate_label_conflict`: a labeled train sample in the pool sample's duplicate cluster has
  another label.
- `class_balance_cap`: per class at most `balance` x its share of the labeled train set, of the
  samples left (the least confident go first).

Writes `<out>/manifest.parquet` (schema.derived_rows: origin `pseudo`, `parent_id` the pool
sample, `split` train, the pool sample's pixels, `label`/`label_id` the pseudo-label,
`confidence` the teacher's probability of it, `pseudo_round`, `weight` = `pseudo.weight`) and
per round: pool, kept, coverage, per-class counts and thresholds, the drops by rule,
`estimated_precision` (the thresholds applied to the teacher's val predictions: out-of-fold in
round 1, the student's own early-stopping set after it, so optimistic) and, where the pool's
truth is known (`hidden_label`, from `ingest.keep_labels`), the real `precision`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from pipeline.core import artifacts, dataset, schema, wiring
from pipeline.core.console import log
from pipeline.core.errors import PipelineError
from pipeline.core.params import RECIPE_KEYS, Pseudo
from pipeline.core.wiring import StageParams

RULES = (
    "below_class_threshold",
    "ensemble_disagrees",
    "neighbours_disagree",
    "duplicate_label_conflict",
    "class_balance_cap",
)


def thresholds(conf: np.ndarray, pred: np.ndarray, k: int, portion: float, floor: float) -> np.ndarray:
    """Per class: the confidence of the ceil(`portion` x n)-th most confident of the n pool samples
    predicted as it (at least `floor`; inf for a class nobody is predicted as)."""
    out = np.full(k, np.inf)
    for c in range(k):
        v = np.sort(conf[pred == c])[::-1]
        if len(v):
            out[c] = max(floor, float(v[int(np.ceil(portion * len(v))) - 1]))
    return out


def confidence_floor(probs: np.ndarray, y: np.ndarray, target: float) -> float:
    """The lowest confidence t at which labeled predictions with confidence >= t are at least
    `target` precise (inf when no such set exists): a floor that adapts to how calibrated the
    teacher is on this data (a fixed 0.8 kept nothing of a 92%-accurate ensemble on digits)."""
    if not len(y):
        return np.inf
    conf = probs.max(1)
    order = np.argsort(-conf, kind="stable")
    precision = np.cumsum(probs.argmax(1)[order] == y[order]) / np.arange(1, len(y) + 1)
    ok = np.flatnonzero(precision >= target)
    return float(conf[order][ok[-1]]) if len(ok) else np.inf


def neighbour_vote(pool_emb: np.ndarray, ref_emb: np.ndarray, ref_y: np.ndarray, k: int, chunk: int = 4096):
    """The majority label of each pool row's `k` nearest reference rows (cosine), ties to the nearest."""
    import torch

    k = min(k, len(ref_y))
    ref = torch.from_numpy(np.ascontiguousarray(ref_emb, np.float32))
    out = np.empty(len(pool_emb), np.int64)
    for lo in range(0, len(pool_emb), chunk):
        sim = torch.from_numpy(np.ascontiguousarray(pool_emb[lo : lo + chunk], np.float32)) @ ref.T
        near = ref_y[sim.topk(k, dim=1).indices.numpy()]  # (n, k), nearest first
        counts = np.stack([(near == c).sum(1) for c in range(ref_y.max() + 1)], axis=1)
        # argmax takes the first of equal counts: weight each class's count by its first rank instead
        first = np.where(near[:, :, None] == np.arange(counts.shape[1]), np.arange(k)[None, :, None], k).min(1)
        out[lo : lo + chunk] = np.argmax(counts * (k + 1) - first, axis=1)
    return out


def select(
    probs: np.ndarray,
    cfg: Pseudo,
    portion: float,
    floor: float,
    labeled_share: np.ndarray,
    agreement: np.ndarray | None = None,
    neighbours: np.ndarray | None = None,
    duplicate: np.ndarray | None = None,
) -> tuple[np.ndarray, dict]:
    """(kept mask, report) for pool probabilities (N, K), kept at confidence >= `floor` and the
    class thresholds. `agreement`: the share of fold models
    voting for the argmax (None: one model); `neighbours`: the neighbour vote per row (None: off);
    `duplicate`: the label of a labeled duplicate per row, -1 where none."""
    k = probs.shape[1]
    pred, conf = probs.argmax(1), probs.max(1)
    cut = thresholds(conf, pred, k, portion, max(floor, cfg.min_confidence))
    alive = np.ones(len(probs), bool)
    dropped = dict.fromkeys(RULES, 0)

    def drop(rule: str, fails: np.ndarray) -> None:
        hit = alive & fails
        dropped[rule] = int(hit.sum())
        alive[hit] = False

    drop("below_class_threshold", conf < cut[pred])
    if agreement is not None:
        drop("ensemble_disagrees", agreement < cfg.min_agreement)
    if neighbours is not None:
        drop("neighbours_disagree", neighbours != pred)
    if duplicate is not None:
        drop("duplicate_label_conflict", (duplicate >= 0) & (duplicate != pred))
    cap = np.ceil(cfg.balance * labeled_share * alive.sum()).astype(np.int64)
    over = np.zeros(len(probs), bool)
    for c in range(k):
        idx = np.flatnonzero(alive & (pred == c))
        if len(idx) > cap[c]:  # the least confident go first; ties by row, so reproducible
            order = idx[np.lexsort((idx, -conf[idx]))]
            over[order[cap[c] :]] = True
    drop("class_balance_cap", over)
    report = {
        "pool": len(probs),
        "kept": int(alive.sum()),
        "coverage": round(float(alive.mean()), 6) if len(probs) else 0.0,
        "confidence_floor": round(floor, 6) if np.isfinite(floor) else None,
        "thresholds": [round(float(t), 6) if np.isfinite(t) else None for t in cut],
        "per_class": np.bincount(pred[alive], minlength=k).tolist(),
        "dropped": dropped,
    }
    assert report["pool"] == report["kept"] + sum(dropped.values())
    return alive, report


def estimated_precision(probs: np.ndarray, y: np.ndarray, cut: list) -> dict:
    """The class thresholds applied to labeled held-out predictions: precision and coverage there."""
    pred, conf = probs.argmax(1), probs.max(1)
    t = np.array([np.inf if c is None else c for c in cut])
    passed = conf >= t[pred] if len(probs) else np.zeros(0, bool)
    return {
        "estimated_precision": round(float((pred[passed] == y[passed]).mean()), 6) if passed.any() else None,
        "val_coverage": round(float(passed.mean()), 6) if len(probs) else None,
    }


NOISE_KEYS = ("mixup_alpha", "cutmix_alpha", "mix_prob", "switch_prob", "random_erasing", "soft_labels")
STUDENT_KEYS = (*RECIPE_KEYS, "patience", "min_steps", "max_epochs", *NOISE_KEYS)  # the train keys a student takes


def student_config(params: StageParams, n: int):
    """The students' recipe: train's, at `pseudo.student_epochs` (size-aware for `n` samples)."""
    from pipeline.core.params import Train
    from pipeline.learn import fit

    recipe = {k: getattr(params.train, k) for k in STUDENT_KEYS}
    return fit.schedule(Train(**recipe, epochs=params.pseudo.student_epochs), n)


class Result(NamedTuple):
    labels: pd.DataFrame  # the pseudo-labelled pool samples' manifest rows
    metrics: dict


def run(
    params: StageParams, clean_df: pd.DataFrame, oof_df: pd.DataFrame, emb: np.ndarray, classes: list[str]
) -> Result:
    """(pseudo manifest, metrics) from the clean manifest and the oof manifest + embeddings."""
    cfg, k = params.pseudo, len(classes)
    clean_df, oof_df = clean_df.reset_index(drop=True), oof_df.reset_index(drop=True)
    if not clean_df[schema.SAMPLE_ID].equals(oof_df[schema.SAMPLE_ID]):
        raise PipelineError("clean and oof manifests list different samples; re-run clean")
    pool = np.flatnonzero((clean_df[schema.SPLIT] == schema.POOL).to_numpy()) if cfg.enabled else np.zeros(0, np.int64)
    labeled = np.flatnonzero(((clean_df[schema.SPLIT] == "train") & (clean_df[schema.LABEL_ID] >= 0)).to_numpy())
    val = np.flatnonzero((clean_df[schema.SPLIT] == "val").to_numpy())
    y = clean_df[schema.LABEL_ID].to_numpy(np.int64)
    share = np.bincount(y[labeled], minlength=k) / max(1, len(labeled))
    metrics = {"enabled": cfg.enabled, "pool": len(pool), "rounds": []}
    if not len(pool):
        return Result(
            _rows(clean_df.iloc[:0], np.zeros(0, np.int64), np.zeros(0), 0, cfg, classes), metrics | _last({})
        )

    oof_probs = np.stack(oof_df[schema.PROBS].to_numpy()).astype(np.float64)
    neighbours = (
        neighbour_vote(emb[pool], emb[labeled], y[labeled], cfg.neighbours) if cfg.neighbours and len(labeled) else None
    )
    duplicate = _labeled_duplicate(clean_df, pool, labeled)
    truth = clean_df[schema.HIDDEN_LABEL].iloc[pool] if schema.HIDDEN_LABEL in clean_df else pd.Series(dtype=object)
    known = truth.notna().to_numpy() if len(truth) else np.zeros(len(pool), bool)
    truth_id = truth.map({c: i for i, c in enumerate(classes)}).fillna(-1).to_numpy(np.int64) if len(truth) else None

    # round 1's floor comes from the out-of-fold predictions of the labeled train samples and is
    # checked on val's (both out-of-fold); a student's from val, where it also early-stopped
    oof_train = labeled[oof_df[schema.FOLD].to_numpy()[labeled] >= 0]
    probs_pool, probs_val, agreement = oof_probs[pool], oof_probs[val], clean_df["agreement"].to_numpy()[pool]
    floor = confidence_floor(oof_probs[oof_train], y[oof_train], cfg.precision)
    x = dataset.load_pixels(clean_df) if cfg.rounds > 1 else None  # the students' pixels
    ids, kept, pred = clean_df[schema.SAMPLE_ID].to_numpy(), None, None  # the last round's selection
    for r in range(1, cfg.rounds + 1):
        report = {"round": r, "teacher": "oof ensemble" if r == 1 else f"student {r - 1}"}
        if r > 1:
            rows = (labeled, val, pool[kept])
            teacher = np.concatenate([oof_probs[labeled], probs_pool[kept]])
            probs_pool, probs_val, report["student"] = _student(params, x, y, ids, rows, pool, pred[kept], teacher, r)
            floor = confidence_floor(probs_val, y[val], cfg.precision)
        portion = min(1.0, cfg.portion + (r - 1) * cfg.portion_step)
        kept, sel = select(probs_pool, cfg, portion, floor, share, agreement if r == 1 else None, neighbours, duplicate)
        pred, conf = probs_pool.argmax(1), probs_pool.max(1)
        report |= {"portion": round(portion, 6), **sel, **estimated_precision(probs_val, y[val], sel["thresholds"])}
        if known.any():
            hit = kept & known
            report["precision"] = round(float((pred[hit] == truth_id[hit]).mean()), 6) if hit.any() else None
            report["teacher_accuracy"] = round(float((pred[known] == truth_id[known]).mean()), 6)
        metrics["rounds"].append(report)
        log.info(
            "pseudo: round %d (%s): %d of %d kept (%.1f%%), estimated precision %s%s",
            r,
            report["teacher"],
            sel["kept"],
            len(pool),
            100 * sel["coverage"],
            report["estimated_precision"],
            f", precision {report['precision']}" if "precision" in report else "",
        )
    df = _rows(clean_df.iloc[pool[kept]], pred[kept], conf[kept], cfg.rounds, cfg, classes)
    return Result(df, metrics | _last(metrics["rounds"][-1]))


def _last(report: dict) -> dict:
    """The last round's headline figures at the top level (what `dvc metrics diff` shows first)."""
    keys = ("kept", "coverage", "estimated_precision", "precision", "per_class")
    return {k: report.get(k, 0 if k in ("kept", "coverage") else None) for k in keys}


def _labeled_duplicate(df: pd.DataFrame, pool: np.ndarray, labeled: np.ndarray) -> np.ndarray | None:
    """Per pool row, the label id of a labeled train sample in its duplicate cluster (-1: none)."""
    if schema.CLUSTER_ID not in df or not len(labeled):
        return None
    by_cluster = df.iloc[labeled].drop_duplicates(schema.CLUSTER_ID).set_index(schema.CLUSTER_ID)[schema.LABEL_ID]
    return df[schema.CLUSTER_ID].iloc[pool].map(by_cluster).fillna(-1).to_numpy(np.int64)


def _student(params: StageParams, x, y, ids, rows, pool, pseudo_y, teacher: np.ndarray, r: int):
    """Train round `r`'s student on the labeled rows + the pseudo-labeled ones (`rows`: labeled,
    val, pseudo-labeled row indices; `teacher`: the probabilities behind their targets, for
    `train.soft_labels`); (its pool probabilities, its val probabilities, a report)."""
    from pipeline.augment import mixing
    from pipeline.learn import draws, fit, inference, losses, runtime

    cfg = params.pseudo
    labeled, val, pseudo = rows
    idx = np.concatenate([labeled, pseudo])
    targets = np.concatenate([y[labeled], pseudo_y])
    weight = np.concatenate([np.ones(len(labeled)), np.full(len(pseudo), cfg.weight)])
    train_cfg = student_config(params, len(idx))
    seed, k = params.base.seed + 1000 * r, teacher.shape[1]
    share = train_cfg.soft_labels
    result = fit.fit(
        fit.Inputs(
            x[idx],
            targets,
            x[val],
            y[val],
            k,
            sample_weight=weight if weight.sum() > 0 else None,
            sample_ids=ids[idx].tolist(),
            soft_targets=losses.soft_targets(targets, teacher, k, share, train_cfg.label_smoothing)
            if share > 0
            else None,
            online=draws.random_shift(cfg.shift, seed),
            mix=mixing.make_batch_transform(train_cfg, seed),
        ),
        train_cfg,
        seed,
        device=runtime.device(params.base.device),
        desc=f"pseudo student {r - 1}",
    )
    best = result.history[result.best_epoch - 1]
    info = {"n_train": len(idx), "best_epoch": result.best_epoch, "val_accuracy": best["val_accuracy"]}
    return inference.predict_proba(result.model, x[pool]), inference.predict_proba(result.model, x[val]), info


def _rows(parents: pd.DataFrame, label_id: np.ndarray, conf: np.ndarray, rnd: int, cfg: Pseudo, classes: list[str]):
    parents = parents.assign(label=[classes[i] for i in label_id], label_id=label_id.astype(np.int64), split="train")
    return schema.derived_rows(
        parents,
        schema.PSEUDO,
        [dataset.sample_id(p, "pseudo") for p in parents[schema.SAMPLE_ID]],
        {"confidence": np.round(conf, 6), "pseudo_round": np.full(len(parents), rnd, np.int64)},
        cfg.weight,
        {c: parents[c].to_numpy() for c in schema.STORAGE},
    )


STAGE = wiring.Stage(
    "pseudo",
    reads=(
        wiring.Flag("--clean", "clean output: the labeled train set and the unlabeled pool"),
        wiring.Flag("--oof", "oof output: the ensemble's pool probabilities and the embeddings"),
    ),
    writes=(wiring.Flag("--out", "output folder"),),
    params=("base", "pseudo", *(f"train.{k}" for k in STUDENT_KEYS)),
    plots=False,
)


def main(params: StageParams, args: argparse.Namespace) -> None:
    clean_df, classes = schema.read(args.clean, "samples")
    oof_df, oof_classes, emb, _ = artifacts.read_oof(args.oof)
    if oof_classes != classes:
        raise PipelineError(f"{args.oof}: class list differs from {args.clean}'s")
    df, metrics = run(params, clean_df, oof_df, emb, classes)
    out = Path(args.out)
    with dataset.staged_dir(out) as tmp:
        dataset.write_manifest(df, tmp / dataset.MANIFEST, classes, final_dir=out)
    dataset.write_json(args.metrics, metrics)
    log.info("pseudo: %d pseudo-labeled samples of a pool of %d", len(df), metrics["pool"])
