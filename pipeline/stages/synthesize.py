"""synthesize: class-conditional synthetic train samples, admitted only through the gate.

Trains `synthesize.generator` (pipeline/synthesize/generators.py) on the real train samples
of the clean manifest (after its action), draws a target number of samples per class
(`synthesize.per_class`, or with `synthesize.balance` what each class lacks to reach the
largest) and gates them with the oof stage's fold models as judges
(pipeline/synthesize/gate.py). A class whose samples were rejected is drawn again, up to
`synthesize.max_draws` times its target, so the gate thins a weak class instead of erasing it.
Writes, under `<out>/`:

- `manifest.parquet` + `images/`: the admitted samples (`origin: synthetic`, `split: train`,
  no `parent_id`, `generator`, `model_id`, `seed`, the gate's scores);
- `rejected.csv`: every other sample drawn, with its `reason` (the failed checks, or `surplus`
  beyond a class's target, or `generator_rejected`) and scores;
- `generator.pt`: the generator's weights, config and training history;

plus `metrics/synthesize.json` (the verdict, the thresholds, FID / KID / precision / recall
of the first draw and of the admitted samples, overall and per class, next to real val's;
TSTR accuracy on real val) and `plots/synthesize/{samples,interpolation}.png`.

The generator is rejected, and nothing admitted, when fewer than `gate.min_admitted` of its
first draw pass: the stage logs a warning and succeeds, so the pipeline goes on without
synthetic data. Test labels are never read (TSTR is measured on val). Sample `k` of class
`c` decodes the latent code drawn from `(base.seed, "synthesize:<generator>:<c>:<k>")`.
When `synthesize.enabled` is false the manifest is empty.
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
from pipeline.core.params import RECIPE_KEYS, Train
from pipeline.core.wiring import StageParams
from pipeline.render import gallery

COLUMNS = schema.columns(
    "generator", "model_id", "seed", after_weight=("p_label", "nn_train_dist", "nn_val_test_dist", "realism")
)
REJECTED_COLUMNS = [
    "sample_id",
    "label",
    "generator",
    "reason",
    "p_label",
    "pred_label",
    "nn_train_dist",
    "nn_val_test_dist",
    "realism",
]
GENERATOR_FILE, REJECTED_FILE = "generator.pt", "rejected.csv"


def counts(train_labels: np.ndarray, num_classes: int, per_class: int, balance: bool) -> np.ndarray:
    """Samples to draw per class: `per_class` each, or the gap to the largest class."""
    if not balance:
        return np.full(num_classes, per_class, np.int64)
    have = np.bincount(train_labels, minlength=num_classes)
    return (have.max() - have).astype(np.int64)


def judges_and_reference(clean_df: pd.DataFrame, oof_dir: Path, device=None):
    """(fold models on `device`, gate.Reference, real train rows): real features come from oof's embeddings."""
    from pipeline.learn import checkpoints
    from pipeline.synthesize import gate

    if not (oof_dir / artifacts.OOF_MODELS).is_dir():
        raise PipelineError(f"{oof_dir / artifacts.OOF_MODELS}: no fold models (re-run the oof stage)")
    judges = checkpoints.fold_models(oof_dir, device)
    oof_df, _, emb, _ = artifacts.read_oof(oof_dir)
    row_of = pd.Series(np.arange(len(oof_df)), index=oof_df[schema.SAMPLE_ID].to_numpy())
    missing = ~clean_df[schema.SAMPLE_ID].isin(row_of.index)
    if missing.any():
        raise PipelineError(
            f"{oof_dir}: no embedding for {int(missing.sum())} samples of the clean manifest; re-run oof"
        )
    real = clean_df[schema.ORIGIN] == schema.REAL
    train = clean_df[real & (clean_df[schema.SPLIT] == "train")]
    holdout = clean_df[real & clean_df[schema.SPLIT].isin(["val", "test"])]
    val = clean_df[real & (clean_df[schema.SPLIT] == "val")]
    feats = lambda df: emb[row_of.loc[df[schema.SAMPLE_ID]].to_numpy()]  # noqa: E731
    probe = gate.features(judges, dataset.load_pixels(train.head(1)))
    if probe.shape[1] != emb.shape[1]:
        # oof's embeddings are a backbone's (backbone.name set), not the judges' space: the judges
        # embed the real samples themselves, from the stored pixels the synthetic ones are made at
        log.info("synthesize: oof's embeddings are the backbone's; the fold models embed the real samples")
        feats = lambda df: gate.features(judges, dataset.load_pixels(df))  # noqa: E731
    ref = gate.Reference(
        train=feats(train),
        train_labels=train[schema.LABEL_ID].to_numpy(np.int64),
        train_hashes=set(train[schema.PIXEL_SHA256]),
        holdout=feats(holdout),
        holdout_hashes=set(holdout[schema.PIXEL_SHA256]),
        val=feats(val),
        val_labels=val[schema.LABEL_ID].to_numpy(np.int64),
    )
    return judges, ref, train


def tstr_config(params: StageParams) -> Train:
    """The train recipe (params.RECIPE_KEYS), for `gate.tstr_epochs`, without early stopping."""
    return Train(**{k: getattr(params.train, k) for k in RECIPE_KEYS}, epochs=params.synthesize.gate.tstr_epochs)


def tstr(
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    cfg: Train,
    num_classes: int,
    seed: int,
    device=None,
) -> float | None:
    """Accuracy on real (x_test, y_test) of a classifier trained (on `device`) only on synthetic (x, y)."""
    from pipeline.learn import fit, inference

    if len(x) < 2 or len(x_test) == 0:
        return None
    model = fit.fit(fit.Inputs(x, y, x[:0], y[:0], num_classes), cfg, seed, device=device, desc="synthesize tstr").model
    return round(float((inference.predict_proba(model, x_test).argmax(1) == y_test).mean()), 6)


def draw(
    gen, model_id: str, labels: np.ndarray, index: np.ndarray, classes: list[str], weight: float, seed: int
) -> tuple[pd.DataFrame, np.ndarray]:
    """Decode sample `index[i]` of class `labels[i]`: its latent code comes from its own seed."""
    # 53 bits, as augment's seeds: the column stays exact beside other manifests' in assemble
    seeds = [dataset.sample_seed(seed, f"synthesize:{gen.name}:{c}:{k}") & (2**53 - 1) for c, k in zip(labels, index)]
    pixels = gen.decode(gen.latents(seeds, labels), labels)
    rows = schema.derived_rows(
        None,
        schema.SYNTHETIC,
        [dataset.sample_id("synthetic", gen.name, model_id, c, k) for c, k in zip(labels, index)],
        own={
            "generator": gen.name,
            "model_id": model_id,
            "seed": np.array(seeds, np.int64),
            "k": np.asarray(index, np.int64),
        },
        weight=weight,
        storage={"pixel_sha256": [dataset.pixel_hash(p) for p in pixels]},
        path=[f"synthetic/{gen.name}/{classes[c]}/{k:05d}" for c, k in zip(labels, index)],
        label=[classes[c] for c in labels],
        label_id=np.asarray(labels, np.int64),
    )
    return rows, pixels


def _more(targets: np.ndarray, drawn: np.ndarray, passed: np.ndarray, max_draws: int) -> np.ndarray:
    """Samples to draw next per class: enough to fill its shortfall at its pass rate so far, within the cap."""
    short = np.maximum(targets - passed, 0)
    rate = np.maximum(passed / np.maximum(drawn, 1), 1.0 / max_draws)
    want = np.ceil(1.1 * short / rate).astype(np.int64)
    return np.where(short > 0, np.minimum(want, targets * max_draws - drawn), 0)


def sample_and_admit(
    cfg, gen, judges, ref, classes: list[str], targets: np.ndarray, seed: int
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, dict]:
    """Draw `targets[c]` samples of each class and gate them (`cfg`: params.Synthesize); while the
    generator is admitted, draw more of a class (up to `max_draws` times its target) to replace
    its rejected samples. Returns (rows + scores, `reason` and `first_draw`, pixels, admitted
    mask, metrics).

    The verdict and the `generated` set metrics are those of the first draw, the generator's
    plain output; `admitted` is what passes, at most `targets[c]` per class (`surplus` beyond).
    """
    from pipeline.synthesize import gate

    th = gate.thresholds(ref, cfg.gate, seed)
    model_id, k = gen.fingerprint(), len(classes)
    drawn, passed = np.zeros(k, np.int64), np.zeros(k, np.int64)
    parts, n = [], targets.copy()
    while n.sum():
        labels = np.repeat(np.arange(k), n)
        index = np.concatenate([drawn[c] + np.arange(n[c]) for c in range(k)])
        rows, px = draw(gen, model_id, labels, index, classes, cfg.weight, seed)
        feats, probs = gate.features(judges, px), gate.judge_probs(judges, px)
        rows = pd.concat(
            [rows, gate.assess(ref, th, feats, probs, labels, list(rows[schema.PIXEL_SHA256]), cfg.gate.tau)], axis=1
        ).assign(first_draw=not parts)
        parts.append((rows, px, feats))
        drawn += n
        passed += np.bincount(labels[(rows["reason"] == "").to_numpy()], minlength=k)
        fraction = passed.sum() / max(targets.sum(), 1)
        if len(parts) == 1 and fraction < cfg.gate.min_admitted:
            break
        n = _more(targets, drawn, passed, cfg.max_draws)
    rows = pd.concat([p[0] for p in parts], ignore_index=True)
    order = np.lexsort((rows["k"].to_numpy(), rows[schema.LABEL_ID].to_numpy()))
    rows = rows.iloc[order].reset_index(drop=True)
    pixels, feats = np.concatenate([p[1] for p in parts])[order], np.concatenate([p[2] for p in parts])[order]
    first, ok = rows["first_draw"].to_numpy(), (rows["reason"] == "").to_numpy()
    fraction = float(ok[first].mean()) if first.any() else 0.0
    verdict = "admitted" if first.any() and fraction >= cfg.gate.min_admitted else "rejected"
    rank = rows.assign(ok=ok).groupby(schema.LABEL_ID)["ok"].cumsum().to_numpy()  # passing samples so far, per class
    admitted = ok & (rank <= targets[rows[schema.LABEL_ID].to_numpy()]) & (verdict == "admitted")
    rows.loc[ok & ~admitted, "reason"] = "surplus" if verdict == "admitted" else "generator_rejected"
    labels = rows[schema.LABEL_ID].to_numpy()
    metrics = {
        "generated": int(first.sum()),
        "passed_fraction": round(fraction, 6),
        "verdict": verdict,
        "verdict_reason": (
            ""
            if verdict == "admitted"
            else f"{fraction:.3f} of the first {int(first.sum())} samples passed, below "
            f"gate.min_admitted = {cfg.gate.min_admitted}"
        ),
        "drawn": len(rows),
        "admitted": int(admitted.sum()),
        "admitted_per_class": {c: int((admitted & (labels == i)).sum()) for i, c in enumerate(classes)},
        "rejected_by_reason": {r: int(sum(r in x.split(";") for x in rows["reason"])) for r in gate.REASONS},
        "thresholds": {**th.as_dict(), "tau": cfg.gate.tau},
        "label_consistency": round(float(rows.loc[first, "p_label"].mean()), 6) if first.any() else None,
        "quality": gate.report(
            ref,
            {"generated": (feats[first], labels[first]), "admitted": (feats[admitted], labels[admitted])},
            classes,
            cfg.gate,
            seed,
        ),
    }
    return rows.drop(columns="k"), pixels, admitted, metrics


class Result(NamedTuple):
    samples: pd.DataFrame  # the admitted samples' manifest rows; `store`, `row` filled when written
    pixels: np.ndarray  # their images, one per row
    rejected: pd.DataFrame  # REJECTED_COLUMNS
    metrics: dict
    generator: tuple | None  # (the generator, its training history) for GENERATOR_FILE; None when off
    pictures: dict  # file name -> a PNG grid for the plots folder


def run(params: StageParams, clean_df: pd.DataFrame, classes: list[str], oof_dir: Path, gen=None) -> Result:
    """Train `synthesize.generator` on the train samples, draw, and admit what the gate passes;
    the judges are oof's fold models (read from `oof_dir`).

    `gen`: a generator object to use instead of `synthesize.generator` (tests plant bad ones).
    """
    cfg = params.synthesize
    metrics = {"enabled": cfg.enabled}
    if not cfg.enabled:
        none = pd.DataFrame(columns=COLUMNS)
        return Result(none, np.zeros((0, 1, 1, 1), np.uint8), pd.DataFrame(columns=REJECTED_COLUMNS), metrics, None, {})
    from pipeline.learn import runtime
    from pipeline.synthesize import generators

    runtime.set_threads(params.train)
    dev = runtime.device(params.base.device)  # the judges and TSTR; the small generator trains on the CPU
    judges, ref, train = judges_and_reference(clean_df, oof_dir, dev)
    if gen is None:
        gen = generators.build(
            cfg.generator,
            getattr(cfg, cfg.generator),
            dataset.load_pixels(train.head(1)).shape[1:],
            len(classes),
            params.base.seed,
        )
    x, y = dataset.load_pixels(train), train[schema.LABEL_ID].to_numpy(np.int64)
    history = gen.fit(x, y)
    targets = counts(y, len(classes), cfg.per_class, cfg.balance)
    rows, pixels, admitted, gated = sample_and_admit(cfg, gen, judges, ref, classes, targets, params.base.seed)
    metrics.update(
        generator=gen.name,
        model_id=gen.fingerprint(),
        epochs=len(history),
        final_losses={k: v for k, v in (history[-1] if history else {}).items() if k != "epoch"},
        **gated,
    )
    val = clean_df[(clean_df[schema.ORIGIN] == schema.REAL) & (clean_df[schema.SPLIT] == "val")]
    metrics["tstr_val_accuracy"] = tstr(
        pixels[admitted],
        rows[schema.LABEL_ID].to_numpy()[admitted],
        dataset.load_pixels(val),
        val[schema.LABEL_ID].to_numpy(np.int64),
        tstr_config(params),
        len(classes),
        params.base.seed,
        dev,
    )
    if metrics["verdict"] == "rejected":
        log.warning("synthesize: generator %s rejected (%s); nothing admitted", gen.name, metrics["verdict_reason"])
    rows = rows.assign(store=np.full(len(rows), None, object), row=np.full(len(rows), -1, np.int64))
    rejected = rows[~admitted].assign(pred_label=lambda d: [classes[i] for i in d["pred_label_id"]])
    pictures = {
        "samples.png": sample_grid(rows, pixels, classes, cfg.preview, gen.name),
        "interpolation.png": interpolation_grid(gen, len(classes), classes, params.base.seed),
    }
    return Result(
        rows[admitted][COLUMNS].reset_index(drop=True),
        pixels[admitted],
        rejected[REJECTED_COLUMNS].reset_index(drop=True),
        metrics,
        (gen, history),
        pictures,
    )


def sample_grid(rows: pd.DataFrame, pixels: np.ndarray, classes: list[str], n: int, name: str):
    """One row per class: its first `n` samples, captioned with p(label) or why they were rejected."""
    shape = pixels.shape[1:] if len(pixels) else (8, 8, 1)
    images, caps = [], []
    for c, label in enumerate(classes):
        idx = np.flatnonzero(rows[schema.LABEL_ID].to_numpy() == c)[:n]
        for j in range(n):
            if j < len(idx):
                r = rows.iloc[idx[j]]
                images.append(pixels[idx[j]])
                caps.append(
                    f"{label}\n{r['p_label']:.2f}"
                    if r["reason"] == ""
                    else f"{label}\nx {r['reason'].split(';')[0].replace('_', ' ')}"
                )
            else:
                images.append(np.full(shape, 255, np.uint8))
                caps.append("")
    title = f"{name}: one row per class; admitted: judges' p(label), rejected: x reason"
    return gallery.grid(np.stack(images), caps, cols=n, title=title)


def interpolation_grid(gen, num_classes: int, classes: list[str], seed: int, steps: int = 8):
    """One row per class: decodes along the straight line between two latent codes."""
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    z, labels = [], []
    for c in range(num_classes):
        a, b = gen.latents([dataset.sample_seed(seed, f"interpolate:{gen.name}:{c}:{e}") for e in (0, 1)], [c, c])
        z.append((1 - t) * a + t * b)
        labels += [c] * steps
    images = gen.decode(np.concatenate(z), np.array(labels))
    caps = [classes[c] if i % steps == 0 else "" for i, c in enumerate(labels)]
    return gallery.grid(images, caps, cols=steps, title=f"{gen.name}: latent interpolation, one row per class")


STAGE = wiring.Stage(
    "synthesize",
    reads=(wiring.Flag("--clean", "clean output: the train samples"), wiring.Flag("--oof", "oof output: the judges")),
    writes=(wiring.Flag("--out", "output folder"),),
    params=("base", "synthesize", *(f"train.{k}" for k in RECIPE_KEYS)),
)


def main(params: StageParams, args: argparse.Namespace) -> None:
    clean_df, classes = schema.read(args.clean, "samples")
    out, plots = Path(args.out), Path(args.plots)
    plots.mkdir(parents=True, exist_ok=True)
    result = run(params, clean_df, classes, Path(args.oof))
    metrics = result.metrics
    with dataset.staged_dir(out) as tmp:
        if result.generator is not None:
            from pipeline.synthesize import generators

            gen, history = result.generator
            generators.save(tmp / GENERATOR_FILE, gen, classes, history)
        df = dataset.store_pixels(result.samples, result.pixels, tmp / "images", out / "images")
        dataset.write_manifest(df, tmp / dataset.MANIFEST, classes, final_dir=out)
        dataset.write_csv(tmp / REJECTED_FILE, result.rejected)
    for name, picture in result.pictures.items():
        gallery.save(picture, plots / name)
    dataset.write_json(args.metrics, metrics)
    if metrics["enabled"]:
        log.info(
            "synthesize: %s %s, %d samples admitted of %d drawn; TSTR val accuracy %s",
            metrics["generator"],
            metrics["verdict"],
            metrics["admitted"],
            metrics["drawn"],
            metrics["tstr_val_accuracy"],
        )
