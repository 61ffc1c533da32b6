"""evaluate: score the model on the test split.

Writes `metrics/evaluate.json` (accuracy, top-5 accuracy, macro F1, per-class precision /
recall / F1 / support, expected calibration error, NLL, n_test; the same ECE and NLL after
temperature scaling fitted on val), and under the plots folder `confusion.csv`
(`actual,predicted` class names, one row per test sample, for DVC's confusion template),
`calibration.csv` and `calibration_temperature.csv` (the reliability diagram's bins, raw and
temperature-scaled, with the diagonal as `ideal`).

Every run is also recorded in a test-set ledger (`.pipeline/test_ledger.jsonl`, outside DVC):
once more distinct configurations than `evaluate.max_test_evaluations` have been scored, a
warning says so, because picking among many configurations by their test score makes the
test set part of training. The ledger never changes the metrics.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from pipeline.core import dataset, schema, wiring
from pipeline.core.console import log
from pipeline.core.errors import PipelineError
from pipeline.core.wiring import StageParams

LEDGER = ".pipeline/test_ledger.jsonl"


def confusion_matrix(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """(k, k) counts, rows actual, columns predicted."""
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k)


def calibration_bins(proba: np.ndarray, y: np.ndarray, bins: int) -> pd.DataFrame:
    """Equal-width confidence bins (lo, hi]: count, mean confidence and accuracy per bin."""
    conf, correct = proba.max(axis=1).astype(np.float64), proba.argmax(axis=1) == y
    idx = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, conf, bins) / count
        acc = np.bincount(idx, correct.astype(np.float64), bins) / count
    return pd.DataFrame(
        {
            "bin_lo": np.arange(bins) / bins,
            "bin_hi": np.arange(1, bins + 1) / bins,
            "count": count,
            "confidence": mean_conf,
            "accuracy": acc,
        }
    )


def reliability(proba: np.ndarray, y: np.ndarray, bins: int) -> pd.DataFrame:
    """`calibration_bins` of the non-empty bins, with the diagonal (`ideal`: accuracy = confidence) to plot beside."""
    t = calibration_bins(proba, y, bins)
    t = t[t["count"] > 0].assign(ideal=lambda d: d["confidence"])
    return t.round(6).reset_index(drop=True)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float | None:
    """The temperature T in [0.05, 20] minimising the NLL of softmax(logits / T) on held-out data
    (temperature scaling, Guo et al. 2017): one parameter, so accuracy is unchanged and val suffices.
    None where val has no error: its NLL then falls without bound as T -> 0, so nothing is learned."""
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    if len(y) == 0 or (logits.argmax(axis=1) == y).all():
        return None
    z, rows = logits.astype(np.float64), np.arange(len(y))

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        return float((logsumexp(s, axis=1) - s[rows, y]).mean())

    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded").x))


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """sum over bins of (bin size / N) * |accuracy - mean confidence| (Guo et al. 2017)."""
    t = calibration_bins(proba, y, bins)
    t = t[t["count"] > 0]
    return float((t["count"] * (t["accuracy"] - t["confidence"]).abs()).sum() / len(y))


def score(proba: np.ndarray, y: np.ndarray, classes: list[str], ece_bins: int) -> dict:
    """Test metrics for probabilities (N, K) and true class ids (N,)."""
    k, n = len(classes), len(y)
    if proba.shape != (n, k):
        raise PipelineError(f"expected probabilities of shape ({n}, {k}), got {proba.shape}")
    pred = proba.argmax(axis=1)
    cm = confusion_matrix(y, pred, k)
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.nan_to_num(tp / predicted)
        recall = np.nan_to_num(tp / support)
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    seen = (support + predicted) > 0  # as scikit-learn: labels present in y or in predictions
    top = min(5, k)
    top_k = np.argpartition(-proba, top - 1, axis=1)[:, :top] if k > top else np.tile(np.arange(k), (n, 1))
    nll = -np.log(np.clip(proba[np.arange(n), y].astype(np.float64), 1e-12, None))
    r = lambda v: round(float(v), 6)  # noqa: E731  stable JSON across runs
    correct = int((pred == y).sum())
    return {
        "n_test": int(n),
        "accuracy": r((pred == y).mean()),
        "accuracy_ci95": [r(v) for v in accuracy_interval(correct, n)],
        "top5_accuracy": r((top_k == y[:, None]).any(axis=1).mean()),
        "macro_f1": r(f1[seen].mean()),
        "ece": r(expected_calibration_error(proba, y, ece_bins)),
        "nll": r(nll.mean()),
        "per_class": {
            c: {"precision": r(precision[i]), "recall": r(recall[i]), "f1": r(f1[i]), "support": int(support[i])}
            for i, c in enumerate(classes)
        },
    }


def accuracy_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson (exact binomial) interval of an accuracy of `correct` out of `n`."""
    from scipy.stats import binomtest

    if n == 0:
        return 0.0, 1.0
    ci = binomtest(correct, n).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def confusion_rows(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> pd.DataFrame:
    names = np.asarray(classes, dtype=object)
    return pd.DataFrame({"actual": names[y], "predicted": names[pred]})


def params_hash(params: StageParams) -> str:
    """sha256 of the canonical JSON of every params section except `evaluate`."""
    canon = json.dumps(params.model_dump(mode="json", exclude={"evaluate"}), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def record_test_evaluation(ledger: str | Path, params: StageParams, model_path: str | Path) -> int:
    """Append this evaluation to the ledger; return the number of distinct configurations in it.

    Warns once that number passes `evaluate.max_test_evaluations`.
    """
    ledger = Path(ledger)
    entry = {
        "params_hash": params_hash(params),
        "model_sha256": hashlib.sha256(Path(model_path).read_bytes()).hexdigest(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    ledger.parent.mkdir(parents=True, exist_ok=True)
    with ledger.open("a") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
    hashes = set()
    for line in ledger.read_text().splitlines():
        try:
            hashes.add(json.loads(line)["params_hash"])
        except (ValueError, KeyError, TypeError):
            continue  # a hand-edited or truncated line must not stop an evaluation
    limit = params.evaluate.max_test_evaluations
    if len(hashes) > limit:
        log.warning(
            "evaluate: the test set has now scored %d distinct configurations (more than "
            "evaluate.max_test_evaluations = %d, see %s). Choosing among many configurations "
            "by their test score turns the test set into training data: compare experiments "
            "on the validation split, and keep the test set for the final one.",
            len(hashes),
            limit,
            ledger,
        )
    return len(hashes)


def robustness(params: StageParams, model, test: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    """Accuracy under each attack at each eps, on a seeded subset of the test split.

    Returns ({"<attack>_eps<eps>": accuracy}, a wide table eps x attack for `dvc plots`).
    """
    from pipeline.learn.robustness import robust_accuracy

    cfg = params.evaluate.robustness
    if not cfg.attacks or not cfg.eps:
        return {}, pd.DataFrame()
    if cfg.max_samples and len(test) > cfg.max_samples:
        keys = [dataset.sample_seed(params.base.seed, f"robustness:{s}") for s in test[schema.SAMPLE_ID]]
        test = test.iloc[np.sort(np.argsort(keys, kind="stable")[: cfg.max_samples])]
    eps = sorted({0.0, *cfg.eps})
    rows = robust_accuracy(
        model,
        dataset.load_pixels(test),
        test[schema.LABEL_ID].to_numpy(np.int64),
        list(cfg.attacks),
        eps,
        cfg.steps,
        params.base.seed,
    )
    flat = {f"{r['attack']}_eps{r['eps']:g}": r["accuracy"] for r in rows if r["eps"] > 0}
    flat["n"] = int(len(test))
    curve = pd.DataFrame(rows).pivot(index="eps", columns="attack", values="accuracy").reset_index()
    curve.columns.name = None
    return flat, curve


STAGE = wiring.Stage(
    "evaluate",
    reads=(wiring.Flag("--model", "model file"), wiring.Flag("--split", "split output")),
    writes=(),
    params=("base.seed", "base.device", "train.threads", "evaluate"),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    STAGE.add_arguments(p)
    p.add_argument("--ledger", default=LEDGER, help="test-set ledger, not a DVC output (default: %(default)s)")


class Result(NamedTuple):
    metrics: dict
    plots: dict[str, pd.DataFrame]  # file name -> a table for `dvc plots`


def run(params: StageParams, model, split_df: pd.DataFrame, classes: list[str]) -> Result:
    """Score `model` on the test split: accuracy with its interval, per class, calibration (and
    after temperature scaling fitted on val), and the robustness curve."""
    from pipeline.learn import inference

    test = split_df[split_df[schema.SPLIT] == "test"]
    y = test[schema.LABEL_ID].to_numpy(np.int64)
    batch, bins = params.evaluate.batch_size, params.evaluate.ece_bins
    logits = inference.predict_logits(model, dataset.load_pixels(test), batch)
    proba = softmax(logits).astype(np.float32)
    metrics = score(proba, y, classes, bins)
    val = split_df[split_df[schema.SPLIT] == "val"]
    t = fit_temperature(
        inference.predict_logits(model, dataset.load_pixels(val), batch), val[schema.LABEL_ID].to_numpy(np.int64)
    )
    scaled = softmax(logits, t or 1.0)
    nll = -np.log(np.clip(scaled[np.arange(len(y)), y], 1e-12, None))
    metrics["temperature"] = {
        "t": round(t or 1.0, 6),
        "fitted": t is not None,  # false: val has no error to fit on (T stays 1)
        "fitted_on": int(len(val)),
        "ece": round(expected_calibration_error(scaled, y, bins), 6),
        "nll": round(float(nll.mean()), 6),
    }
    plots = {
        "confusion.csv": confusion_rows(y, proba.argmax(axis=1), classes),
        "calibration.csv": reliability(proba, y, bins),
        "calibration_temperature.csv": reliability(scaled, y, bins),
    }
    metrics["robustness"], curve = robustness(params, model, test)
    if len(curve):
        plots["robustness.csv"] = curve
    return Result(metrics, plots)


def main(params: StageParams, args: argparse.Namespace) -> None:
    from pipeline.learn import checkpoints, runtime

    split_df, classes = schema.read(args.split, "samples")
    if not (split_df[schema.SPLIT] == "test").any():
        raise PipelineError(f"{args.split}: no test samples to evaluate (check split.fractions)")
    runtime.set_threads(params.train)  # the same torch threads as training (train.threads)
    model, _, model_classes = checkpoints.load_model(args.model)
    model = model.to(runtime.device(params.base.device))
    if model_classes != classes:
        raise PipelineError(f"{args.model}: trained on classes {model_classes}, but {args.split} has {classes}")
    metrics, plots = run(params, model, split_df, classes)
    for name, table in plots.items():
        dataset.write_csv(Path(args.plots) / name, table)
    dataset.write_json(args.metrics, metrics)
    record_test_evaluation(args.ledger, params, args.model)
    log.info(
        "evaluate: accuracy %.4f, macro F1 %.4f, ECE %.4f (%.4f at temperature %.2f) on %d test samples",
        metrics["accuracy"],
        metrics["macro_f1"],
        metrics["ece"],
        metrics["temperature"]["ece"],
        metrics["temperature"]["t"],
        metrics["n_test"],
    )
    lo, hi = metrics["accuracy_ci95"]
    if (hi - lo) / 2 > params.evaluate.max_interval:
        log.warning(
            "evaluate: only %d test samples: accuracy %.2f has a 95%% interval of %.2f-%.2f, too wide "
            "to tell models apart (more images, or a larger split.fractions.test)",
            metrics["n_test"],
            metrics["accuracy"],
            lo,
            hi,
        )
