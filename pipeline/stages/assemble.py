"""assemble: the training set, one manifest of real train samples plus derived ones.

Writes `<out>/manifest.parquet` with a `weight` column. `assemble.use` says which derived
origins it takes (by default pseudo-labels only: the ablation's evidence, params.AssembleUse);
the rows of an origin it does not use are counted in the metrics (`not_used`), not trained on.
Derived manifests (augmented, adversarial, synthetic) are admitted only if their lineage holds (see `check_lineage`):
a derived sample's parent is a real train sample and the child inherits its split;
nothing derives from val or test, and no id is reused. A pseudo-labeled sample's parent is an
unlabeled (pool) sample; the child is in train with the label the models gave it.
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
from pipeline.core.wiring import StageParams


def check_lineage(real: pd.DataFrame, derived: pd.DataFrame, name: str) -> None:
    """Raise PipelineError naming the first rule `derived` breaks against the split `real`."""

    def fail(rule: str, rows: pd.DataFrame) -> None:
        ids = ", ".join(rows[schema.SAMPLE_ID].astype(str).head(3))
        raise PipelineError(f"{name}: {len(rows)} sample(s) {rule} (e.g. {ids})")

    bad_origin = derived[~derived[schema.ORIGIN].isin(schema.DERIVED_ORIGINS)]
    if len(bad_origin):
        fail(f"have an origin outside {sorted(schema.DERIVED_ORIGINS)}", bad_origin)
    reused = derived[derived[schema.SAMPLE_ID].isin(real[schema.SAMPLE_ID]) | derived[schema.SAMPLE_ID].duplicated()]
    if len(reused):
        fail("reuse an existing sample_id", reused)
    if (derived[schema.SPLIT] != "train").any():
        fail("are not in the train split", derived[derived[schema.SPLIT] != "train"])
    has_parent = derived[schema.PARENT_ID].notna() & (derived[schema.PARENT_ID].astype(str) != "")
    if (has_parent & (derived[schema.ORIGIN] == schema.SYNTHETIC)).any():
        fail("are synthetic but name a parent", derived[has_parent & (derived[schema.ORIGIN] == schema.SYNTHETIC)])
    needs_parent = derived[schema.ORIGIN] != schema.SYNTHETIC
    if (needs_parent & ~has_parent).any():
        fail("are derived but name no parent_id", derived[needs_parent & ~has_parent])
    parent_split = derived.loc[has_parent, schema.PARENT_ID].map(real.set_index(schema.SAMPLE_ID)[schema.SPLIT])
    if parent_split.isna().any():
        fail("name a parent_id that is not a real sample", derived.loc[parent_split[parent_split.isna()].index])
    pseudo = derived.loc[has_parent, schema.ORIGIN] == schema.PSEUDO
    if (pseudo & (parent_split != schema.POOL)).any():
        bad = parent_split[pseudo & (parent_split != schema.POOL)]
        fail("are pseudo-labels of a sample outside the unlabeled pool", derived.loc[bad.index])
    if (~pseudo & (parent_split != "train")).any():
        bad = parent_split[~pseudo & (parent_split != "train")]
        fail("derive from a sample outside train (val, test or the pool)", derived.loc[bad.index])


class Result(NamedTuple):
    samples: pd.DataFrame  # the training set: real train samples and the derived rows used
    metrics: dict


def run(
    params: StageParams, split_df: pd.DataFrame, derived: dict[str, pd.DataFrame], weights: pd.DataFrame | None = None
) -> Result:
    """The training set: `split_df`'s real train samples at `assemble.real_weight` and the
    `derived` manifests by name, their lineage checked. `weights` (sample_id, weight), e.g. the
    mine stage's, multiply the real rows' weight (missing: 1). Rows of an origin `assemble.use`
    leaves out are counted, not taken."""
    cfg = params.assemble
    use = cfg.use.model_dump()
    taken, not_used = {}, {}
    for name, df in derived.items():
        keep = df[schema.ORIGIN].map(lambda o: use.get(o, True)).astype(bool).to_numpy() if len(df) else []
        taken[name] = df[keep] if len(df) else df
        for origin, n in df.loc[~np.asarray(keep, bool), schema.ORIGIN].value_counts().sort_index().items():
            not_used[str(origin)] = not_used.get(str(origin), 0) + int(n)
    out, metrics = combine(split_df, taken, cfg.real_weight, weights)
    metrics["use"], metrics["not_used"] = use, not_used
    return Result(out, metrics)


def combine(
    split_df: pd.DataFrame, derived: dict[str, pd.DataFrame], real_weight: float, weights: pd.DataFrame | None = None
) -> Result:
    """run's work, with the params it reads as arguments (every derived row is taken)."""
    real = schema.real_train(split_df).copy()
    real[schema.WEIGHT] = real_weight
    if weights is not None:
        real[schema.WEIGHT] *= (
            real[schema.SAMPLE_ID].map(weights.set_index(schema.SAMPLE_ID)[schema.WEIGHT]).fillna(1.0).to_numpy()
        )
    parts, counts = [real], {schema.REAL: len(real)}
    for name, df in derived.items():
        check_lineage(split_df, df, name)
        df = df.copy()
        if schema.WEIGHT not in df:
            df[schema.WEIGHT] = 1.0
        parts.append(df)
        counts[name] = len(df)
    out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else real.reset_index(drop=True)
    if weights is not None and schema.HARDNESS in weights:
        out[schema.HARDNESS] = hardness(out, weights)
    metrics = {
        "total": len(out),
        "by_source": counts,
        "by_origin": {str(k): int(v) for k, v in out[schema.ORIGIN].value_counts().sort_index().items()},
    }
    return Result(out, metrics)


def hardness(out: pd.DataFrame, weights: pd.DataFrame) -> np.ndarray:
    """Per training sample, mine's hardness (what `train.curriculum` orders by): a real sample's
    own, a derived copy its parent's; where there is none (synthetic, pseudo-labeled), the median."""
    by_id = weights.set_index(schema.SAMPLE_ID)[schema.HARDNESS]
    h = out[schema.SAMPLE_ID].map(by_id).fillna(out[schema.PARENT_ID].map(by_id)).to_numpy(np.float64)
    fill = float(np.nanmedian(h)) if np.isfinite(h).any() else 0.5
    return np.where(np.isfinite(h), h, fill).round(6)


STAGE = wiring.Stage(
    "assemble",
    reads=(
        wiring.Flag("--clean", "clean output: the real samples"),
        wiring.Flag("--derived", "derived dataset folders to admit (each with a manifest.parquet)", many=True),
        wiring.Flag("--mine", "mine output: the per-sample weights"),
    ),
    writes=(wiring.Flag("--out", "output folder"),),
    params=("assemble",),
    plots=False,
)


def main(params: StageParams, args: argparse.Namespace) -> None:
    split_df, classes = schema.read(args.clean, "samples")
    derived = {}
    for d in args.derived:
        df, their_classes = schema.read(d, "derived")
        if their_classes != classes:
            raise PipelineError(f"{d}: class list differs from {args.clean}'s")
        derived[d] = df
    weights = artifacts.read_mine_weights(args.mine)
    df, metrics = run(params, split_df, derived, weights)
    out = Path(args.out)
    with dataset.staged_dir(out) as tmp:
        dataset.write_manifest(df, tmp / dataset.MANIFEST, classes, final_dir=out)
    dataset.write_json(args.metrics, metrics)
    log.info("assemble: %d training samples %s", metrics["total"], metrics["by_origin"])
    if metrics["not_used"]:
        log.info(
            "assemble: made but not trained on (assemble.use): %s; the ablation (docs/report.md) found they cost "
            "accuracy at the default budget; set assemble.use.<origin>: true to train on them",
            metrics["not_used"],
        )
