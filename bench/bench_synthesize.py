"""Synthetic data on Fashion-MNIST: each generator's quality, its gate, TSTR on the real test set.

Needs a project folder (`--source`, default `.`) where ingest, split, oof and clean have run
on Fashion-MNIST (`ingest.source: fashion-mnist`); its params.yaml gives the train recipe and
the synthesize section, with this script's generator lengths (`--set` overrides any
`synthesize.*` key, e.g. `--set gan.epochs=10 --set gate.tau=0.7`).

For each generator in `--generators`: train it on the clean train split (timed), draw
`--per-class` samples per class, gate them with the oof fold models (as the stage does),
then train the small CNN (the train recipe, `--clf-steps` steps) on (a) all generated
samples and (b) the admitted ones only, and score it on the real test split (TSTR); and,
for reference, on as many real train images as were admitted.

`--low-data`: for each fraction in `--fractions`, a stratified subset of the train labels;
the judges (3 small CNNs, seeds 0-2) and each generator are trained on that subset only (so
no label outside it leaks in), and the small CNN is trained on the subset alone, subset + all
generated, subset + admitted; test accuracy each.

Prints markdown tables; writes `--out` (default bench/synthesize_results.json).

    python bench/bench_synthesize.py --generators vae gan --per-class 1000 [--low-data] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipeline.core import dataset
from pipeline.core import params as P
from pipeline.learn import fit, runtime
from pipeline.stages import synthesize as stage
from pipeline.synthesize import gate, generators

# Lengths for Fashion-MNIST (54k train images), each under 20 min on 2 shared cores:
# measured 1 thread, under load, 60k images: VAE ~30 s / epoch, GAN ~75 s / epoch.
DEFAULT_SETS = ["vae.epochs=20", "gan.epochs=15"]


def load_params(source: Path, sets: list[str], threads: int) -> P.Params:
    raw = yaml.safe_load((source / "params.yaml").read_text()) or {}
    syn = raw.setdefault("synthesize", {})
    for kv in sets:
        key, value = kv.split("=", 1)
        *path, last = key.removeprefix("synthesize.").split(".")
        node = syn
        for part in path:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    raw.setdefault("train", {})["threads"] = threads
    return P.parse(raw, str(source / "params.yaml"))


def recipe(params: P.Params, n: int, steps: int) -> P.Train:
    """The train recipe for about `steps` optimiser steps on `n` images."""
    cfg = stage.tstr_config(params)
    return cfg.model_copy(update={"epochs": max(1, math.ceil(steps * cfg.batch_size / max(n, 1)))})


def accuracy(params, x, y, test, num_classes: int, steps: int, seed: int) -> float | None:
    x_test, y_test = test
    return stage.tstr(x, y, x_test, y_test, recipe(params, len(x), steps), num_classes, seed)


def train_and_gate(
    params: P.Params, name: str, train: pd.DataFrame, judges, ref, classes, per_class: int, epochs: int | None = None
) -> dict:
    """Train generator `name` on `train`, draw and gate its samples as the stage does."""
    syn = params.synthesize
    knobs = getattr(syn, name)
    if epochs is not None:
        knobs = knobs.model_copy(update={"epochs": epochs})
    syn = syn.model_copy(update={"per_class": per_class, "balance": False, name: knobs})
    gen = generators.build(name, knobs, dataset.load_pixels(train.head(1)).shape[1:], len(classes), params.base.seed)
    t0 = time.perf_counter()
    gen.fit(dataset.load_pixels(train), train["label_id"].to_numpy(np.int64))
    seconds = time.perf_counter() - t0
    targets = np.full(len(classes), per_class, np.int64)
    rows, pixels, admitted, gated = stage.sample_and_admit(syn, gen, judges, ref, classes, targets, params.base.seed)
    first = rows["first_draw"].to_numpy()
    return {
        "y": rows["label_id"].to_numpy(np.int64),
        "pixels": pixels,
        "admitted": admitted,
        "first": first,
        "metrics": gated,
        "train_seconds": seconds,
        "epochs": knobs.epochs,
    }


def full_data(params, args, clean, classes, judges, ref, train, test) -> dict:
    out, k = {}, len(classes)
    val_df = clean[(clean["origin"] == "real") & (clean["split"] == "val")]
    val = (dataset.load_pixels(val_df), val_df["label_id"].to_numpy(np.int64))
    x_train, y_train = dataset.load_pixels(train), train["label_id"].to_numpy(np.int64)
    for name in args.generators:
        r = train_and_gate(params, name, train, judges, ref, classes, args.per_class)
        y, m, a, first = r["y"], r["metrics"], r["admitted"], r["first"]
        q = m["quality"]
        n_real = max(int(a.sum()), 2)
        pick = np.random.default_rng(params.base.seed).choice(len(x_train), min(n_real, len(x_train)), replace=False)
        out[name] = {
            "train_seconds": round(r["train_seconds"], 1),
            "epochs": r["epochs"],
            "generated": m["generated"],
            "drawn": m["drawn"],
            "admitted": m["admitted"],
            "passed_fraction": m["passed_fraction"],
            "verdict": m["verdict"],
            "rejected_by_reason": m["rejected_by_reason"],
            "admitted_per_class": m["admitted_per_class"],
            "label_consistency": m["label_consistency"],
            "generated_set": q["generated"],
            "admitted_set": q["admitted"],
            "real_baseline": q["real_baseline"],
            "tstr_test_all": accuracy(params, r["pixels"][first], y[first], test, k, args.clf_steps, params.base.seed),
            "tstr_test_admitted": accuracy(params, r["pixels"][a], y[a], test, k, args.clf_steps, params.base.seed),
            "tstr_val_admitted": accuracy(params, r["pixels"][a], y[a], val, k, args.clf_steps, params.base.seed),
            "real_same_n_test": accuracy(
                params, x_train[pick], y_train[pick], test, k, args.clf_steps, params.base.seed
            ),
        }
        print(f"{name}: {json.dumps({k2: v for k2, v in out[name].items() if not isinstance(v, dict)})}", flush=True)
    return out


def subset(train: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """A stratified `fraction` of the train rows (at least 2 per class), by per-sample draws."""
    u = np.array([dataset.sample_seed(seed, f"low-data:{s}") for s in train["sample_id"]], np.uint64)
    parts = []
    for _, g in train.assign(_u=u).groupby("label_id", sort=True):
        parts.append(g.sort_values("_u").head(max(2, round(fraction * len(g)))))
    return pd.concat(parts).drop(columns="_u").sort_index()


def low_data(params, args, clean, classes, train, test) -> dict:
    k, seed, out = len(classes), params.base.seed, {}
    real = clean[clean["origin"] == "real"]
    holdout, val = real[real["split"].isin(["val", "test"])], real[real["split"] == "val"]
    for fraction in args.fractions:
        sub = subset(train, fraction, seed)
        xs, ys = dataset.load_pixels(sub), sub["label_id"].to_numpy(np.int64)
        judges = [
            fit.fit(
                fit.Inputs(xs, ys, xs[:0], ys[:0], k),
                recipe(params, len(xs), args.clf_steps),
                seed + j,
                desc=f"judge {j}",
            ).model
            for j in range(3)
        ]
        ref = gate.Reference(
            train=gate.features(judges, xs),
            train_labels=ys,
            train_hashes=set(sub["pixel_sha256"]),
            holdout=gate.features(judges, dataset.load_pixels(holdout)),
            holdout_hashes=set(holdout["pixel_sha256"]),
            val=gate.features(judges, dataset.load_pixels(val)),
            val_labels=val["label_id"].to_numpy(np.int64),
        )
        row = {"labels": len(sub), "real_only": accuracy(params, xs, ys, test, k, args.clf_steps, seed)}
        for name in args.generators:
            bs = getattr(params.synthesize, name).batch_size
            epochs = max(1, math.ceil(args.low_data_gen_steps * bs / len(sub)))
            r = train_and_gate(params, name, sub, judges, ref, classes, args.low_data_per_class, epochs)
            y, a, first = r["y"], r["admitted"], r["first"]
            row[name] = {
                "train_seconds": round(r["train_seconds"], 1),
                "epochs": epochs,
                "admitted": int(a.sum()),
                "generated": int(first.sum()),
                "drawn": len(a),
                "verdict": r["metrics"]["verdict"],
                "plus_all": accuracy(
                    params,
                    np.concatenate([xs, r["pixels"][first]]),
                    np.concatenate([ys, y[first]]),
                    test,
                    k,
                    args.clf_steps,
                    seed,
                ),
                "plus_admitted": accuracy(
                    params,
                    np.concatenate([xs, r["pixels"][a]]),
                    np.concatenate([ys, y[a]]),
                    test,
                    k,
                    args.clf_steps,
                    seed,
                ),
            }
        out[str(fraction)] = row
        print(f"low data {fraction}: {json.dumps(row)}", flush=True)
    return out


def tables(results: dict) -> str:
    f = lambda v, d=4: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = [
        "| generator | train time | FID generated / admitted | KID generated / admitted | precision | recall | "
        "admitted / generated | TSTR test: admitted / generated | real, same n |",
        "|---|" + "---|" * 8,
    ]
    lines = lines if results["generators"] else []
    for name, r in results["generators"].items():
        a, s = r["generated_set"], r["admitted_set"]
        lines.append(
            f"| {name} ({r['epochs']} epochs) | {r['train_seconds'] / 60:.1f} min | {f(a['fid'])} / "
            f"{f(s['fid'])} | {f(a['kid'], 5)} / {f(s['kid'], 5)} | {f(a['precision'], 3)} | "
            f"{f(a['recall'], 3)} | {r['admitted']}/{r['generated']} ({r['verdict']}) | "
            f"**{f(r['tstr_test_admitted'])}** / {f(r['tstr_test_all'])} | {f(r['real_same_n_test'])} |"
        )
    if results["generators"]:
        b = next(iter(results["generators"].values()))["real_baseline"]
        lines.append(
            f"| real val vs train (baseline) | | {f(b['fid'])} | {f(b['kid'], 5)} | {f(b['precision'], 3)} | "
            f"{f(b['recall'], 3)} | | | |"
        )
    if results.get("low_data"):
        gens = [g for g in next(iter(results["low_data"].values())) if g not in ("labels", "real_only")]
        lines += [
            "",
            "| train labels | real only | " + " | ".join(f"+ {g} all | + {g} admitted" for g in gens) + " |",
            "|---|---|" + "---|---|" * len(gens),
        ]
        for fraction, row in results["low_data"].items():
            cells = " | ".join(
                f"{f(row[g]['plus_all'])} | {f(row[g]['plus_admitted'])} ({row[g]['admitted']}/{row[g]['generated']})"
                for g in gens
            )
            lines.append(f"| {float(fraction):.0%} ({row['labels']}) | {f(row['real_only'])} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=Path("."), help="project folder with data/clean, data/oof")
    names = sorted(generators.GENERATORS)
    ap.add_argument("--generators", nargs="+", default=names, choices=names)
    ap.add_argument("--per-class", type=int, default=1000)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a synthesize.* override")
    ap.add_argument("--clf-steps", type=int, default=1500, help="optimiser steps of each small CNN trained here")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--low-data", action="store_true")
    ap.add_argument("--low-data-only", action="store_true", help="the low-data experiment alone")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05])
    ap.add_argument("--low-data-per-class", type=int, default=1000)
    ap.add_argument("--low-data-gen-steps", type=int, default=5000, help="generator steps on a low-data subset")
    ap.add_argument("--out", type=Path, default=Path("bench/synthesize_results.json"))
    args = ap.parse_args()
    params = load_params(args.source, DEFAULT_SETS + args.set, args.threads)
    runtime.set_threads(params.train)
    clean, classes = dataset.read_manifest(args.source / "data/clean")
    real = clean[clean["origin"] == "real"]
    train, test_df = real[real["split"] == "train"], real[real["split"] == "test"]
    test = (dataset.load_pixels(test_df), test_df["label_id"].to_numpy(np.int64))
    judges, ref, _ = stage.judges_and_reference(clean, args.source / "data/oof")
    print(
        f"{len(train)} train, {len(test_df)} test images; {args.per_class} per class; {args.threads} threads",
        flush=True,
    )
    results = {
        "per_class": args.per_class,
        "clf_steps": args.clf_steps,
        "threads": args.threads,
        "sets": DEFAULT_SETS + args.set,
        "generators": {} if args.low_data_only else full_data(params, args, clean, classes, judges, ref, train, test),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")  # kept if low-data fails
    if args.low_data or args.low_data_only:
        results["low_data"] = low_data(params, args, clean, classes, train, test)
        args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(tables(results))


if __name__ == "__main__":
    main()
