"""policy-search: learn an AutoAugment policy from the data by density matching (Fast AutoAugment).

Writes `--out` (`data/policy-search/learned.yaml`, a DVC output: kind `autoaugment`, loadable and canonical like
the shipped policies, with a `search` block holding every kept sub-policy's scores) and
`metrics/policy_search.json`.

The method is Fast AutoAugment's (Lim et al. 2019, arXiv:1905.00397) without its Bayesian
optimiser: fold model `k` of the oof stage never trained on fold `k`'s held-out images, so the
loss it gives them after augmentation measures how far a sub-policy moves images out of the
density the model learned. A random search draws `candidates` sub-policies per fold, two
`(op, magnitude)` pairs each, from `ops` at magnitudes 1..10; each is scored on up to
`max_samples` held-out images of the fold and the `top` lowest losses of every fold make the
policy (Fast AA: top N per fold, united).

The objective has a trivial optimum (no change at all keeps the loss lowest), so candidates are
compared at a common strength rather than left free to shrink:

- a candidate's ops are always applied while it is scored (probability 1), so a rare
  destructive op cannot hide behind a low probability; the learned policy applies each op with
  `probability` (not searched: under this objective it would only go to 0);
- a candidate must change the held-out pixels by at least `min_change` (mean |difference|
  over pixels, in [0, 1]), so Identity-like candidates are not kept; and an (op, magnitude)
  that changes no pixel of the fold's first `PROBE` images is never drawn (Color on grey images,
  Equalize on images already equalised, a 3-degree rotation of an 8x8 image), so that no slot of
  a sub-policy is wasted on one; ops without any such magnitude are listed, per fold, in
  `search.no_effect`.

So among changes of at least the same size, the search keeps those the model still recognises:
directions along the data (a small rotation, a contrast change) rather than off it (Invert,
Solarize, a large Cutout). `min_change` sets the policy's strength, the search its ops.

Randomness: the candidates of fold `k` and the draws while scoring them (signs, Cutout's
centre) come from generators seeded by `(base.seed + seed, k)`, so the file is a function of
the data, the fold models and the params.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple, get_args

import numpy as np
import pandas as pd

from pipeline.augment import ops
from pipeline.augment import policy as pol
from pipeline.core import dataset, schema, wiring
from pipeline.core.console import log, progress
from pipeline.core.errors import PipelineError
from pipeline.core.params import PolicySearch, SearchOp
from pipeline.core.wiring import StageParams

MAGNITUDES = range(1, 11)  # 0 is the identity for every op that has a magnitude
PROBE = 64  # images an (op, magnitude) must change a pixel of to be drawn
assert set(get_args(SearchOp)) == set(ops.OPS) - {"SamplePairing"}, "params.SearchOp must follow ops.OPS"


class Score(NamedTuple):
    """One scored candidate: its (op, magnitude) pairs and what the fold model made of it."""

    sub: tuple[tuple[str, int | None], ...]
    loss: float  # mean cross-entropy of the augmented held-out images
    accuracy: float
    change: float  # mean |augmented - original| / 255


def draw_candidates(
    space: dict[str, list[int | None]], n: int, rng: np.random.Generator
) -> list[tuple[tuple[str, int | None], ...]]:
    """`n` sub-policies of two (op, magnitude) pairs: an op of `space` uniformly, then one of its
    magnitudes (None for an op without one) uniformly."""
    names = list(space)
    out = []
    for _ in range(n):
        pair = []
        for _ in range(2):
            op = names[int(rng.integers(len(names)))]
            pair.append((op, space[op][int(rng.integers(len(space[op])))]))
        out.append(tuple(pair))
    return out


def held_out(df: pd.DataFrame, fold: int, max_samples: int, seed: int) -> np.ndarray:
    """Row positions of fold `fold`'s held-out samples: a per-sample seeded subset of at most `max_samples`."""
    rows = np.flatnonzero(df[schema.FOLD].to_numpy() == fold)
    if len(rows) > max_samples:
        keys = [dataset.sample_seed(seed, f"policy-search:{s}") for s in df[schema.SAMPLE_ID].to_numpy()[rows]]
        rows = np.sort(rows[np.argsort(keys, kind="stable")[:max_samples]])
    return rows


def losses(model, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per-image cross-entropy, per-image correct) of uint8 NHWC images under `model`."""
    from pipeline.learn import inference

    p = inference.predict_proba(model, x).astype(np.float64)
    return -np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0)), p.argmax(1) == y


def augment(x: np.ndarray, sub, rng: np.random.Generator) -> np.ndarray:
    """Every image of `x` under both ops of `sub`, always applied, with parameters drawn from `rng`."""
    policy = pol.AutoAugment(kind="autoaugment", sub_policies=[[(op, 1.0, m) for op, m in sub]])
    return np.stack([pol.apply(img, pol.draw(policy, rng, img.shape)) for img in x])


def score(model, x: np.ndarray, y: np.ndarray, sub, rng: np.random.Generator) -> Score:
    """How `model` fares on `x` (labels `y`) with `sub`'s ops always applied."""
    xa = augment(x, sub, rng)
    loss, correct = losses(model, xa, y)
    change = float(np.abs(xa.astype(np.int16) - x).mean() / 255.0)
    return Score(tuple(sub), float(loss.mean()), float(correct.mean()), change)


def effective(x: np.ndarray, ops_: list[str], rng: np.random.Generator) -> dict[str, list[int | None]]:
    """op -> its magnitudes (None: it has none) that change some pixel of `x`; ops with none left out."""
    space = {}
    for op in ops_:
        levels = [
            m
            for m in (MAGNITUDES if ops.has_magnitude(op) else [None])
            if not np.array_equal(augment(x, [(op, m)], rng), x)
        ]
        if levels:
            space[op] = levels
    return space


def search_fold(
    model, x: np.ndarray, y: np.ndarray, cfg: PolicySearch, seed: int, fold: int
) -> tuple[list[Score], int, list[str]]:
    """(the `top` feasible candidates of one fold, lowest loss first; the number feasible; the
    ops left out as having no effect on the fold's images)."""
    rng = np.random.default_rng([seed, fold])
    space = effective(x[:PROBE], cfg.ops, rng)
    if not space:
        raise PipelineError(f"policy_search.ops: none of {cfg.ops} changes the images of fold {fold}")
    scores = [
        score(model, x, y, sub, rng)
        for sub in progress(draw_candidates(space, cfg.candidates, rng), desc=f"policy search fold {fold}", unit="cand")
    ]
    feasible = [s for s in scores if s.change >= cfg.min_change]
    return sorted(feasible, key=lambda s: s.loss)[: cfg.top], len(feasible), [op for op in cfg.ops if op not in space]


def learned_policy(
    kept: list[tuple[int, int, Score]], clean: list[float], cfg: PolicySearch, info: dict
) -> pol.AutoAugment:
    """The AutoAugment policy of the kept (fold, rank, Score)s, with the search record."""
    r = lambda v: round(float(v), 4)  # noqa: E731  (a record, not a result: 4 digits are plenty)
    rows = [
        {
            "fold": fold,
            "rank": rank,
            "loss": r(s.loss),
            "delta_loss": r(s.loss - clean[fold]),
            "accuracy": r(s.accuracy),
            "change": r(s.change),
        }
        for fold, rank, s in kept
    ]
    search = {
        "method": "density matching with the oof fold models (Fast AutoAugment), random search",
        **info,
        "candidates": cfg.candidates,
        "top": cfg.top,
        "min_change": cfg.min_change,
        "probability": cfg.probability,
        "ops": list(cfg.ops),
        "clean_loss": [r(v) for v in clean],
        "scores": rows,
    }
    return pol.AutoAugment(
        kind="autoaugment",
        search=search,
        description=(
            f"Learned by the policy-search stage (density matching, Fast AutoAugment, Lim et al. 2019): "
            f"the {cfg.top} sub-policies per fold whose augmented held-out images the fold's oof model "
            f"still recognises best, among candidates changing pixels by at least {cfg.min_change:g}. "
            f"Scores in `search`, one row per sub-policy."
        ),
        sub_policies=[[(op, cfg.probability, m) for op, m in s.sub] for _, _, s in kept],
    )


IDENTITY = pol.AutoAugment(
    kind="autoaugment",
    search={"enabled": False},
    sub_policies=[[("Identity", 1.0, None)]],
    description="policy_search.enabled is false: the identity, so that augment.policy learned.yaml stays valid.",
)


class Result(NamedTuple):
    policy: pol.AutoAugment  # the learned policy (identity when off)
    metrics: dict


def run(params: StageParams, df: pd.DataFrame, models: list) -> Result:
    """(learned policy, metrics) from the oof manifest and its fold models."""
    from pipeline.learn import runtime

    cfg = params.policy_search
    folds = sorted(int(f) for f in np.unique(df[schema.FOLD]) if f >= 0)
    if folds != list(range(len(models))):
        raise PipelineError(
            f"expected one fold model per fold of the oof manifest ({len(folds)}), got {len(models)}; re-run oof"
        )
    runtime.set_threads(params.train)
    seed = params.base.seed + cfg.seed
    labels = df[schema.LABEL_ID].to_numpy(np.int64)
    kept, clean, feasible, held, idle = [], [], [], [], []
    for k, model in zip(folds, models):
        rows = held_out(df, k, cfg.max_samples, seed)
        x, y = dataset.load_pixels(df.iloc[rows]), labels[rows]
        start = time.perf_counter()
        clean.append(float(losses(model, x, y)[0].mean()))
        if k == folds[0]:  # time told in advance: each candidate scores the held-out images once
            minutes = (time.perf_counter() - start) * cfg.candidates * len(folds) / 60
            log.info(
                "policy-search: %d folds x %d candidates x %d images: about %.0f min%s",
                len(folds),
                cfg.candidates,
                len(rows),
                minutes,
                " (a backbone's fold models at its input size: lower policy_search.candidates or "
                "backbone.image_size to shorten it)" * (minutes > 5 and getattr(model, "input_size", None) is not None),
            )
        top, n, none = search_fold(model, x, y, cfg, seed, k)
        kept += [(k, rank, s) for rank, s in enumerate(top, 1)]
        feasible.append(n)
        held.append(len(rows))
        idle.append(none)
    if not kept:
        raise PipelineError(
            f"policy_search: no candidate changed the held-out images by at least min_change "
            f"= {cfg.min_change:g} ({cfg.candidates} per fold); lower min_change or raise candidates"
        )
    info = {
        "folds": len(folds),
        "held_out": held,
        "image_shape": list(x.shape[1:]),
        "feasible": feasible,
        "no_effect": idle,
    }
    policy = learned_policy(kept, clean, cfg, info)
    deltas = [s.loss - clean[k] for k, _, s in kept]
    metrics = {
        "enabled": True,
        "sub_policies": len(kept),
        "candidates": cfg.candidates * len(folds),
        "feasible": sum(feasible),
        "clean_loss": round(float(np.mean(clean)), 6),
        "delta_loss_kept": round(float(np.mean(deltas)), 6),
        "accuracy_kept": round(float(np.mean([s.accuracy for _, _, s in kept])), 6),
        "change_kept": round(float(np.mean([s.change for _, _, s in kept])), 6),
        "op_counts": dict(sorted(Counter(op for _, _, s in kept for op, _ in s.sub).items())),
    }
    return Result(policy, metrics)


STAGE = wiring.Stage(
    "policy-search",
    reads=(wiring.Flag("--oof", "oof output with its fold models"),),
    writes=(wiring.Flag("--out", "policy file to write"),),
    params=("base", "policy_search", "train.threads"),
    plots=False,
)


def main(params: StageParams, args: argparse.Namespace) -> None:
    from pipeline.learn import checkpoints, runtime

    if not params.policy_search.enabled:
        policy, metrics = IDENTITY, {"enabled": False, "sub_policies": 1}
    else:
        df, _ = dataset.read_manifest(args.oof)
        policy, metrics = run(params, df, checkpoints.fold_models(args.oof, runtime.device(params.base.device)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pol.save(policy, args.out)
    dataset.write_json(args.metrics, metrics)
    log.info("policy-search: %d sub-policies -> %s", metrics["sub_policies"], args.out)
