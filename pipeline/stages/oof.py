"""oof: out-of-fold class probabilities, embeddings and training dynamics for every sample.

Stratified, group-aware K-fold cross-validation (sklearn `StratifiedGroupKFold`, grouped
by `cluster_id` so a duplicate cluster stays inside one fold) over train + val, on the labels
after the human label patch (`labels/patches.csv`: pool samples a person labeled count as train). Each fold
model is trained for `oof.epochs` epochs without early stopping (choosing the epoch on the
held-out fold would let it leak into its own predictions). With a backbone and `oof.model: probe`
the fold models are linear probes on embed's features instead (pipeline/learn/probe.py: seconds,
not a network trained per fold). Writes, under `<out>/`:

- `manifest.parquet`: the split manifest, one row per sample in the same order, plus `fold`
  (-1 for test), `probs` (a list of K floats: out-of-fold for train/val, the mean of the
  fold models for the rows no fold model trains on: test, the unlabeled pool, removed),
  for those rows the ensemble's `agreement` (the share of fold models that vote for the
  mean's class) and `disagreement` (mutual information between the prediction and the
  model, in nats: BALD's score), NaN elsewhere, and, when `clean.inject_noise.rate > 0`,
  the corrupted `label`/`label_id` with the truth in `true_label`/`true_label_id`;
- `embeddings.npy`: (N, folds * D) float32 in manifest row order, the L2-normalised
  penultimate features of every fold model side by side, so all samples share one space; with
  a backbone, (N, D): its features, L2-normalised, whatever the fold models;
- `dynamics.parquet`: `sample_id`, `fold`, `epoch`, `p_given` (the probability of the given
  label after each epoch, or the probe's round, for every sample a fold model trains on);
- `models/fold{k}.pt`: the fold models (`checkpoints.save_model` files; `fold_models` loads them), real-data
  classifiers for later stages (policy search, the synthetic-data gate) at no extra training.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from pipeline.core import artifacts, dataset, schema, wiring
from pipeline.core.console import Estimate, log
from pipeline.core.errors import PipelineError
from pipeline.core.params import RECIPE_KEYS, Train
from pipeline.core.wiring import StageParams
from pipeline.quality import noise

DYNAMICS_EPOCHS = 16  # epochs of training dynamics recorded at most (evenly spaced), for the data maps


def folds(df: pd.DataFrame, n_folds: int, seed: int) -> np.ndarray:
    """Fold index per row of train + val (-1 elsewhere), stratified by label, grouped by cluster."""
    from sklearn.model_selection import StratifiedGroupKFold

    out = np.full(len(df), -1, np.int64)
    pool = np.flatnonzero(df[schema.SPLIT].isin(["train", "val"]).to_numpy())
    groups = (df[schema.CLUSTER_ID] if schema.CLUSTER_ID in df else df[schema.SAMPLE_ID]).astype(str).to_numpy()[pool]
    if len(np.unique(groups)) < n_folds:
        raise PipelineError(
            f"oof.folds: expected at most {len(np.unique(groups))} folds "
            f"(one per cluster of train + val), got {n_folds}"
        )
    cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, held) in enumerate(cv.split(pool, df[schema.LABEL_ID].to_numpy()[pool], groups)):
        out[pool[held]] = k
    return out


def stopping_rows(ids: np.ndarray, fit_idx: np.ndarray, share: float, seed: int, fold: int):
    """(rows the fold model trains on, rows whose loss stops it): `share` of the fold's training
    rows, drawn by (seed, fold, sample id), decide when it stops paying (a held-out loss plateau,
    `oof.patience` epochs). Never the fold's held-out rows, whose predictions are the output."""
    if share <= 0 or len(fit_idx) < 20:
        return fit_idx, fit_idx[:0]
    keys = np.array([dataset.sample_seed(seed, f"oof-stop:{fold}:{s}") for s in ids[fit_idx]], np.uint64)
    order = np.argsort(keys, kind="stable")
    n = max(1, round(share * len(fit_idx)))
    return np.sort(fit_idx[order[n:]]), np.sort(fit_idx[order[:n]])


def fold_input_size(limit: int | None, x: np.ndarray | None) -> int | None:
    """The side the fold models see: `oof.image_size` where the images are larger (the model
    resizes them), else their own (None). At 64 px the fold CNNs cost 4.8x what they cost at 32."""
    if limit is None or x is None or max(x.shape[1:3]) <= limit:
        return None
    return limit


def train_config(params: StageParams, n_fit: int | None = None) -> Train:
    """The fold models' recipe; with `n_fit` (samples a fold model trains on) a size-aware number
    of epochs: `oof.epochs`, or more to reach `oof.min_steps` optimizer steps."""
    from pipeline.learn.fit import size_aware_epochs

    recipe = {k: getattr(params.train, k) for k in RECIPE_KEYS}
    recipe["model"] = params.oof.model if params.oof.model not in (None, "probe") else recipe["model"]
    recipe["width"] = params.oof.width or recipe["width"]
    o = params.oof
    epochs = (
        o.epochs
        if n_fit is None
        else size_aware_epochs(n_fit, recipe["batch_size"], o.epochs, o.min_steps, o.max_epochs)
    )
    return Train(**recipe, epochs=epochs, patience=o.patience)


SHIFTS = [(a, s) for a in (1, 2) for s in (-1, 1)]  # test-time augmentation: the four 1-pixel shifts
INFER_ROWS = 8192  # rows per inference job, rounded to whole inference batches


def _infer(shared: tuple, job: tuple) -> tuple:
    """One inference job of a fold model: (probabilities, embeddings) of `rows`, or with a
    `shift` (axis, pixels) the probabilities of those rows moved by it."""
    from pipeline.learn import inference

    model, x = shared
    rows, shift = job
    if shift is None:
        return inference.predict_embed(model, x[rows])
    return inference.predict_proba(model, np.roll(x[rows], shift[1], axis=shift[0])), None


def infer(model, x: np.ndarray, groups: list[np.ndarray], tta: bool, executor: str, threads: int) -> tuple:
    """(plain probabilities of every row, their embeddings, and for each group of rows its
    probabilities averaged over the image and its four 1-pixel shifts, or its plain ones
    without `tta`).

    The work is cut into jobs of whole inference batches, each group apart, run here or on
    Ray's workers (`base.executor`) with `threads` torch threads each: every batch is the one a
    single call over the array (or the group) would run, so the bytes do not depend on where
    the jobs ran."""
    import copy
    import functools

    import torch

    from pipeline.core.executor import ordered_map
    from pipeline.learn import inference

    batch = inference.inference_batch(x.shape[1:3])
    step = max(1, INFER_ROWS // batch) * batch

    def cut(rows: np.ndarray, shift) -> list[tuple]:
        return [(rows[a : a + step], shift) for a in range(0, max(len(rows), 1), step)]

    jobs = cut(np.arange(len(x)), None)
    if tta:
        jobs += [job for rows in groups for shift in SHIFTS for job in cut(np.asarray(rows), shift)]
    init = functools.partial(torch.set_num_threads, threads)
    if executor == "ray":  # Ray's workers infer on their CPUs; here, on the model's device
        model = copy.deepcopy(model).cpu()
    done = iter(ordered_map(_infer, jobs, (model, x), 1 if executor == "local" else 0, executor, initializer=init))
    plain = [next(done) for _ in cut(np.arange(len(x)), None)]
    probs, emb = np.concatenate([p for p, _ in plain]), np.concatenate([e for _, e in plain])
    if not tta:
        return probs, emb, [probs[rows] for rows in groups]
    out = []
    for rows in groups:
        shifted = [np.concatenate([next(done)[0] for _ in cut(np.asarray(rows), shift)]) for shift in SHIFTS]
        out.append(np.mean([probs[rows], *shifted], axis=0).astype(np.float32))
    return probs, emb, out


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(1)


def probe_folds(
    params: StageParams,
    df: pd.DataFrame,
    y: np.ndarray,
    fold: np.ndarray,
    k: int,
    features: np.ndarray,
    models: list | None,
    probs: np.ndarray,
    votes: np.ndarray,
    entropy: np.ndarray,
) -> list[pd.DataFrame]:
    """The probe's K folds: fills `probs` (held-out rows, and the mean over folds for the rest),
    `votes` and `entropy` (of the rows no fold trains on) in place; returns the dynamics. A fold's
    model (the backbone with the probe as its head) is appended to `models`."""
    from pipeline.learn import backbones, fit, probe

    loaded = backbones.load(params.backbone, features_channels(df)) if models is not None else None
    test, dynamics, folds_n = np.flatnonzero(fold < 0), [], params.oof.folds
    for f in range(folds_n):
        fit_idx, held = np.flatnonzero((fold >= 0) & (fold != f)), np.flatnonzero(fold == f)
        fit_idx, stop_idx = stopping_rows(
            df[schema.SAMPLE_ID].to_numpy(), fit_idx, params.oof.holdout, params.base.seed, f
        )

        def record(step: int, pr, fit_idx=fit_idx, f=f) -> None:
            p = pr.predict_proba(features[fit_idx])
            ids = df[schema.SAMPLE_ID].to_numpy()[fit_idx]
            p_given = p[np.arange(len(fit_idx)), y[fit_idx]].astype(np.float32)
            dynamics.append(pd.DataFrame({"sample_id": ids, "fold": f, "epoch": step, "p_given": p_given}))

        pr = probe.fit(features[fit_idx], y[fit_idx], k, params.oof.probe_c, params.base.seed + f, on_step=record)
        probs[held] = pr.predict_proba(features[held])
        if len(test):
            p = pr.predict_proba(features[test])
            probs[test] += p / folds_n
            votes[np.arange(len(test)), p.argmax(1)] += 1
            entropy += _entropy(p) / folds_n
        if loaded is not None:
            config = backbones.model_config(loaded, params.backbone.name, k) | {"seed": params.base.seed + f}
            models.append(fit.FitResult(probe.classifier(loaded.model, pr), config=config))
        log.info("oof probe fold %d/%d: %d samples", f + 1, folds_n, len(fit_idx))
    return dynamics


def features_channels(df: pd.DataFrame) -> int:
    return dataset.load_pixels(df.head(1)).shape[-1] if len(df) else 1


def with_human_labels(df: pd.DataFrame, patches: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """`df` as the fold models train on it: the human label patch applied, and a pool sample a
    person labeled in train (clean does the same to the manifest it writes)."""
    from pipeline.core import patches as label_patches

    out, _ = label_patches.apply_patches(df, patches, classes)
    out.loc[((out[schema.SPLIT] == schema.POOL) & (out[schema.HUMAN_LABEL] != "")).to_numpy(), schema.SPLIT] = "train"
    return out


class Result(NamedTuple):
    samples: pd.DataFrame  # the split manifest with fold, probs, agreement, disagreement
    embeddings: np.ndarray  # (N, D) float32, L2-normalised, in `samples`' order
    dynamics: pd.DataFrame  # sample_id, fold, epoch, p_given
    metrics: dict
    models: list  # each fold's fit.FitResult


def run(
    params: StageParams,
    df: pd.DataFrame,
    classes: list[str],
    patches: pd.DataFrame | None = None,
    features: np.ndarray | None = None,
) -> Result:
    """Out-of-fold predictions for a split manifest. The fold models train on the
    labels after the human `patches` (so an active-learning round's answers teach the next
    round's models); the manifest written keeps the split's labels, which clean patches.
    `features`: embed's (in `df`'s order), or None without a backbone. With them, the embeddings
    returned are theirs (L2-normalised), whatever the fold models; with `oof.model: probe` the fold
    models are linear probes on them, not CNNs trained from scratch."""
    from pipeline.learn import draws, fit, inference, probe, runtime

    df = noise.inject_noise(df.reset_index(drop=True), params.clean.inject_noise, classes)
    human = with_human_labels(df, patches, classes) if patches is not None and len(patches) else df
    fold = folds(human, params.oof.folds, params.base.seed)
    n_fit = int(min(((fold >= 0) & (fold != f)).sum() for f in range(params.oof.folds)))
    cfg, k = train_config(params, n_fit), len(classes)
    every = -(-cfg.epochs // DYNAMICS_EPOCHS)  # record training dynamics every this many epochs, and the last,
    after = int(params.oof.burn_in * cfg.epochs)  # after the burn-in
    probing = params.oof.model == "probe"
    if probing and features is None:
        raise PipelineError("oof.model: probe needs the embed stage's features (backbone.name is set?)")
    x = None if probing else dataset.load_pixels(df)
    size = fold_input_size(params.oof.image_size, x)
    y = human[schema.LABEL_ID].to_numpy(np.int64)
    probs = np.zeros((len(df), k), np.float32)
    test = np.flatnonzero(fold < 0)  # test, the pool and removed rows: the ensemble predicts them
    votes, entropy = np.zeros((len(test), k), np.float32), np.zeros(len(test), np.float64)
    embeddings, dynamics, models = [], [], []
    executor, threads = params.base.executor, runtime.threads(cfg)
    if probing:
        dynamics = probe_folds(params, df, y, fold, k, features, models, probs, votes, entropy)
    for f in range(0 if probing else params.oof.folds):
        fit_idx, held = np.flatnonzero((fold >= 0) & (fold != f)), np.flatnonzero(fold == f)
        fit_idx, stop_idx = stopping_rows(
            df[schema.SAMPLE_ID].to_numpy(), fit_idx, params.oof.holdout, params.base.seed, f
        )
        if f == 0:
            estimate = Estimate("oof", cfg.epochs, len(fit_idx), params.oof.folds)

        def record(model, epoch, fit_idx=fit_idx, f=f, p=None):
            """Training dynamics: p(given label) of the samples the fold model trains on. The
            last epoch's come from the pass over every row after training (`p` given). After the
            first fold's second epoch: the time the stage will take, told once."""
            if f == 0 and p is None:
                estimate.epoch_done(epoch)
            if epoch <= after or epoch % every and epoch != cfg.epochs or epoch == cfg.epochs and p is None:
                return
            p = inference.predict_proba(model, x[fit_idx]) if p is None else p
            dynamics.append(
                pd.DataFrame(
                    {
                        "sample_id": df[schema.SAMPLE_ID].to_numpy()[fit_idx],
                        "fold": f,
                        "epoch": epoch,
                        "p_given": p[np.arange(len(fit_idx)), y[fit_idx]].astype(np.float32),
                    }
                )
            )

        result = fit.fit(
            fit.Inputs(
                x[fit_idx],
                y[fit_idx],
                x[stop_idx],
                y[stop_idx],
                k,
                sample_ids=df[schema.SAMPLE_ID].to_numpy()[fit_idx].tolist(),
                online=draws.random_shift(params.oof.shift, params.base.seed + f),
                input_size=size,
            ),
            cfg,
            params.base.seed + f,
            device=runtime.device(params.base.device),
            desc=f"oof fold {f + 1}/{params.oof.folds}",
            on_epoch_end=record,
        )
        models.append(result)
        # one pass over every row gives the embeddings, the last epoch's dynamics and the
        # unshifted view of the held-out and test predictions (no early stopping here: the
        # model after training is the last epoch's)
        plain, e, (probs[held], p) = infer(result.model, x, [held, test], params.oof.tta, executor, threads)
        record(result.model, cfg.epochs, p=plain[fit_idx])
        if len(test):
            probs[test] += p / params.oof.folds
            votes[np.arange(len(test)), p.argmax(1)] += 1
            entropy += _entropy(p) / params.oof.folds
        embeddings.append(e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12))
    df[schema.FOLD], df[schema.PROBS] = fold, list(probs)
    df["agreement"], df["disagreement"] = np.nan, np.nan
    if len(test):
        df.loc[test, "agreement"] = votes[np.arange(len(test)), probs[test].argmax(1)] / params.oof.folds
        df.loc[test, "disagreement"] = np.maximum(_entropy(probs[test]) - entropy, 0.0).round(6)
    dyn = pd.concat(dynamics, ignore_index=True)
    pool = fold >= 0
    metrics = {
        "folds": params.oof.folds,
        "epochs": probe.STEPS if probing else cfg.epochs,  # the probe's: its warm-started rounds
        "steps_per_fold": None if probing else cfg.epochs * (n_fit // min(cfg.batch_size, n_fit)),
        "model": "probe" if probing else cfg.model,
        "epochs_run": [len(m.history) for m in models] if not probing else None,  # per fold: a plateau ends one early
        "input_size": None if probing else size,  # the fold models' side where they resize the images
        "threads": threads,
        "executor": executor,
        "tta": params.oof.tta and not probing,
        "n_oof": int(pool.sum()),
        "n_test": int((df[schema.SPLIT] == "test").sum()),
        "n_unlabeled": int((human[schema.SPLIT] == schema.POOL).sum()),
        "human_labels": int((human[schema.HUMAN_LABEL] != "").sum()) if schema.HUMAN_LABEL in human else 0,
        "oof_accuracy": round(float((probs[pool].argmax(1) == y[pool]).mean()), 6),
        "injected_noise": int((df[schema.LABEL_ID] != df[schema.TRUE_LABEL_ID]).sum()),
    }
    if metrics["injected_noise"]:
        truth = df[schema.TRUE_LABEL_ID].to_numpy()
        metrics["oof_accuracy_vs_truth"] = round(float((probs[pool].argmax(1) == truth[pool]).mean()), 6)
    if features is not None:  # a backbone's space, for clean's detectors, pseudo and active learning
        emb = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    else:  # the fold models' spaces side by side
        emb = np.concatenate(embeddings, axis=1)
    return Result(df, emb.astype(np.float32), dyn, metrics, models)


STAGE = wiring.Stage(
    "oof",
    reads=(
        wiring.Flag("--split", "split output"),
        wiring.Flag("--embed", "embed output: the backbone's features (the probe's input, and the embeddings)"),
        wiring.Flag("--labels", "the human label patch, kept in git"),
    ),
    writes=(wiring.Flag("--out", "output folder"),),
    params=("base", "backbone", "oof", "clean.inject_noise", *(f"train.{k}" for k in RECIPE_KEYS)),
    plots=False,
)


def main(params: StageParams, args: argparse.Namespace) -> None:
    from pipeline.core import patches as label_patches
    from pipeline.core.executor import session
    from pipeline.learn import checkpoints

    split_df, classes = schema.read(args.split, "samples")
    patches = label_patches.read_patches(args.labels, classes)
    backbone = params.backbone.name is not None
    features = artifacts.read_embeddings(args.embed, split_df[schema.SAMPLE_ID]) if backbone else None
    with session(params.base.executor):
        df, emb, dyn, metrics, results = run(params, split_df, classes, patches, features)
    out = Path(args.out)
    with dataset.staged_dir(out) as tmp:
        dataset.write_manifest(df, tmp / dataset.MANIFEST, classes, final_dir=out)
        np.save(tmp / artifacts.OOF_EMBEDDINGS, emb)
        dyn.to_parquet(tmp / artifacts.OOF_DYNAMICS, index=False)
        for f, result in enumerate(results):
            checkpoints.save_model(tmp / artifacts.OOF_MODELS / f"fold{f}.pt", result.model, result.config, classes)
    dataset.write_json(args.metrics, metrics)
    log.info(
        "oof: %d folds, out-of-fold accuracy %.4f on %d samples",
        metrics["folds"],
        metrics["oof_accuracy"],
        metrics["n_oof"],
    )
