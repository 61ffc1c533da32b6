"""mine: hardness per sample from out-of-fold predictions and training dynamics.

For every train/val sample of the clean manifest (label after patches and clean's action):
`loss` (-log p(label)), `margin` (p(label) minus the largest other probability), `entropy`
(normalised to 0..1), and the data-map coordinates of Swayamdipta et al. 2020 from the oof
training dynamics: `confidence` (mean over epochs of p(given label)) and `variability`
(its std), over the epochs oof recorded them for (those after `oof.burn_in`: models trained
from scratch start at chance, so the first epochs measure learning, not the sample). `hardness` is the
mean percentile rank of loss, -margin and entropy. Category:
`ambiguous` (variability >= mine.ambiguous_variability), else `easy` (confidence >=
mine.easy_confidence), else `hard-to-learn`. A sample clean flags as a label issue is
`suspect`, not hard: its `hard` is false, whatever its category.

Writes `<out>/hardness.parquet` (one row per train/val sample, with `reason`),
`<out>/weights.parquet` (`sample_id`, `weight` for train samples: proportional to hardness,
clipped to [min_weight, max_weight], mean 1 over non-suspects; suspects get
`mine.suspect_weight`; and `hardness`, which orders a curriculum), `<out>/top_hard.csv`,
`metrics/mine.json` and `plots/mine/hardest.png`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from pipeline.core import artifacts, dataset, schema, wiring
from pipeline.core.console import log
from pipeline.core.wiring import StageParams
from pipeline.render import gallery

HARDNESS = "hardness.parquet"
TOP = "top_hard.csv"
CATEGORIES = ("easy", "ambiguous", "hard-to-learn")


def scores(probs: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    n, k = probs.shape
    p = np.clip(probs, 1e-12, 1.0)
    p_y = p[np.arange(n), y]
    other = p.copy()
    other[np.arange(n), y] = -1
    entropy = -(p * np.log(p)).sum(1) / np.log(k)
    out = pd.DataFrame({"loss": -np.log(p_y), "margin": p_y - other.max(1), "entropy": entropy})
    ranks = pd.concat(
        [out["loss"].rank(pct=True), (-out["margin"]).rank(pct=True), out["entropy"].rank(pct=True)], axis=1
    )
    out.insert(0, "hardness", ranks.mean(axis=1))
    return out


def data_map(dynamics: pd.DataFrame, burn_in: float = 0.0) -> pd.DataFrame:
    """confidence, variability per sample_id: p_given averaged over folds per epoch, then over
    the epochs after the first `burn_in` fraction of them."""
    dynamics = dynamics[dynamics["epoch"] > int(burn_in * dynamics["epoch"].max())]
    per_epoch = dynamics.groupby([schema.SAMPLE_ID, "epoch"], sort=True)["p_given"].mean()
    g = per_epoch.groupby(level=0)
    return pd.DataFrame({"confidence": g.mean(), "variability": g.std(ddof=0)})


class Result(NamedTuple):
    hardness: pd.DataFrame  # one row per train sample: scores, data-map category, hard
    weights: pd.DataFrame  # sample_id, weight
    metrics: dict


def run(params: StageParams, clean_df: pd.DataFrame, oof_df: pd.DataFrame, dynamics: pd.DataFrame) -> Result:
    cfg = params.mine
    probs = pd.Series(list(oof_df[schema.PROBS]), index=oof_df[schema.SAMPLE_ID])
    df = clean_df[clean_df[schema.SPLIT].isin(["train", "val"])].reset_index(drop=True)
    p = np.stack(probs.loc[df[schema.SAMPLE_ID]].to_numpy()).astype(np.float64)
    out = pd.concat(
        [df[[schema.SAMPLE_ID, schema.SPLIT, schema.LABEL]], scores(p, df[schema.LABEL_ID].to_numpy())], axis=1
    )
    dm = data_map(dynamics).reindex(df[schema.SAMPLE_ID])
    out["confidence"], out["variability"] = dm["confidence"].to_numpy(), dm["variability"].to_numpy()
    out["category"] = np.where(
        out["variability"] >= cfg.ambiguous_variability,
        "ambiguous",
        np.where(out["confidence"] >= cfg.easy_confidence, "easy", "hard-to-learn"),
    )
    out["suspect"] = df[schema.IS_LABEL_ISSUE].to_numpy() if schema.IS_LABEL_ISSUE in df else False
    out["hard"] = (out["category"] != "easy") & ~out["suspect"]
    out["reason"] = [_reason(r) for r in out.itertuples()]
    for c in ("hardness", "loss", "margin", "entropy", "confidence", "variability"):
        out[c] = out[c].astype(float).round(6)
    weights = (
        _weights(out[out[schema.SPLIT] == "train"], cfg)
        if cfg.enabled
        else out.loc[out[schema.SPLIT] == "train", ["sample_id"]].assign(weight=1.0)
    )
    train = out[out[schema.SPLIT] == "train"]
    weights[schema.HARDNESS] = train[schema.HARDNESS].to_numpy()  # for train.curriculum, through assemble
    metrics = {
        "enabled": cfg.enabled,
        "n": len(out),
        "hard_fraction": round(float(train["hard"].mean()), 6) if len(train) else 0.0,
        "suspect_fraction": round(float(train["suspect"].mean()), 6) if len(train) else 0.0,
        "categories": {c: int((train["category"] == c).sum()) for c in CATEGORIES},
        "weight_max": round(float(weights[schema.WEIGHT].max()), 6) if len(weights) else 0.0,
    }
    return Result(out, weights, metrics)


def _reason(r) -> str:
    if r.suspect:
        return f"suspect: likely mislabeled (loss {r.loss:.2f})"
    return (
        f"{r.category}: loss {r.loss:.2f}, margin {r.margin:.2f}, "
        f"confidence {r.confidence:.2f}, variability {r.variability:.2f}"
    )


def _weights(train: pd.DataFrame, cfg) -> pd.DataFrame:
    h = train[schema.HARDNESS].to_numpy(np.float64)
    ok = ~train["suspect"].to_numpy(bool)
    w = np.full(len(train), cfg.suspect_weight)
    if ok.any():
        raw = h[ok] / max(h[ok].mean(), 1e-12)
        for _ in range(3):  # clipping moves the mean; a few rounds bring it back to 1
            raw = np.clip(raw / raw.mean(), cfg.min_weight, cfg.max_weight)
        w[ok] = raw
    return pd.DataFrame({"sample_id": train[schema.SAMPLE_ID].to_numpy(), "weight": w.round(6)})


def top_hard(hardness: pd.DataFrame, n: int) -> pd.DataFrame:
    return hardness[hardness["hard"]].sort_values(schema.HARDNESS, ascending=False, kind="stable").head(n)


STAGE = wiring.Stage(
    "mine",
    reads=(wiring.Flag("--oof", "oof output"), wiring.Flag("--clean", "clean output")),
    writes=(wiring.Flag("--out", "output folder"),),
    params=("mine",),
)


def main(params: StageParams, args: argparse.Namespace) -> None:
    oof_df, _, _, dynamics = artifacts.read_oof(args.oof)
    clean_df, classes = schema.read(args.clean, "samples")
    hardness, weights, metrics = run(params, clean_df, oof_df, dynamics)
    top = top_hard(hardness, params.mine.top)
    out = Path(args.out)
    with dataset.staged_dir(out) as tmp:
        hardness.to_parquet(tmp / HARDNESS, index=False)
        weights.to_parquet(tmp / artifacts.MINE_WEIGHTS, index=False)
        dataset.write_csv(tmp / TOP, top)
    dataset.write_json(args.metrics, metrics)
    rows = clean_df.set_index(schema.SAMPLE_ID).loc[top[schema.SAMPLE_ID]].reset_index()
    caps = [
        f"{lab} {c.replace('-to-learn', '')}\n{h:.2f}"
        for lab, c, h in zip(top[schema.LABEL], top["category"], top[schema.HARDNESS])
    ]
    pixels = dataset.load_pixels(rows) if len(rows) else np.zeros((0, 8, 8, 1), np.uint8)
    gallery.save(
        gallery.grid(pixels, caps, cols=8, title="hardest examples: label, category, hardness"),
        Path(args.plots) / "hardest.png",
    )
    log.info(
        "mine: hard fraction %.3f, suspects %.3f, %s",
        metrics["hard_fraction"],
        metrics["suspect_fraction"],
        metrics["categories"],
    )
