"""Planted label noise (`clean.inject_noise`): train labels corrupted per sample, the truth kept,
so that what clean finds can be scored against what was planted. oof applies it before its fold
models train; clean and the benches read `true_label_id`."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.core import dataset, schema
from pipeline.core.errors import PipelineError
from pipeline.core.params import InjectNoise


def inject_noise(df: pd.DataFrame, cfg: InjectNoise, classes: list[str]) -> pd.DataFrame:
    """Train labels corrupted per sample from (seed, sample_id); truth kept in `true_label*`."""
    df = df.copy()
    df[schema.TRUE_LABEL], df[schema.TRUE_LABEL_ID] = df[schema.LABEL], df[schema.LABEL_ID].astype(np.int64)
    if cfg.rate <= 0:
        return df
    k = len(classes)
    ids = df[schema.SAMPLE_ID].to_numpy()
    u = np.array([dataset.sample_seed(cfg.seed, f"noise:{s}") / 2**64 for s in ids])
    shift = np.array([1 + dataset.sample_seed(cfg.seed, f"noise-to:{s}") % (k - 1) for s in ids])
    y = df[schema.LABEL_ID].to_numpy(np.int64).copy()
    target = (y + shift) % k
    if cfg.kind == "pairwise":
        target = (y + 1) % k
        if cfg.pairs:
            partner = np.arange(k)
            for a, b in cfg.pairs:
                for name in (a, b):
                    if name not in classes:
                        raise PipelineError(f"clean.inject_noise.pairs: unknown class {name!r}; classes are {classes}")
                partner[classes.index(a)], partner[classes.index(b)] = classes.index(b), classes.index(a)
            target = partner[y]
    flip = (df[schema.SPLIT].to_numpy() == "train") & (u < cfg.rate) & (target != y)
    y[flip] = target[flip]
    df[schema.LABEL_ID] = y
    df.loc[flip, schema.LABEL] = [classes[i] for i in y[flip]]
    return df
