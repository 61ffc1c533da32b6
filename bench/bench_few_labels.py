"""Transfer with few labels, Fashion-MNIST split-class (Yosinski et al. 2014): a backbone pretrained on
five classes, the other five learned from N labels a class; test accuracy on their official test
images for three rows, from scratch (the train section's defaults), a linear probe on the frozen
features, and fine-tuning (`train.init: backbone`), per seed, with wall times.

    python bench/bench_few_labels.py --weights build/bench/backbone.pt --labels 5 20 100 --seeds 3 \
        --json bench/few_labels_results.json
    python bench/bench_few_labels.py --halves related --weights build/bench/backbone-related.pt ...

`--halves yosinski`: the first five classes as the source, the last five as the target (tops and
trousers against shoes and bags); `--halves related`: each target class has a look-alike among the
source's (Shirt / T-shirt, Pullover / Coat, Sneaker and Ankle boot / Sandal, Trouser / Dress).

The backbone is `python -m pipeline pretrain` output; when `--weights` does not exist it is made
there first (the source classes ingested, split and pretrained, as bench_transfer.py does). The rows
run in this process through the pipeline's kernels (fit, probe, backbones), with no val set: N
labels a class leave none to spare, so each trains its size-aware schedule to the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# (source, target) halves: Yosinski et al.'s split by class index (tops and trousers vs shoes and
# bags: little in common), and one where each target class has a look-alike in the source
HALVES = {
    "yosinski": (
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"],
        ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    ),
    "related": (
        ["T-shirt/top", "Coat", "Sandal", "Bag", "Dress"],
        ["Shirt", "Pullover", "Sneaker", "Ankle boot", "Trouser"],
    ),
}


def pretrain(weights: Path, arch: str, epochs: int, source: list[str]) -> None:
    import yaml

    weights.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-few-") as tmp:
        folder = Path(tmp)
        shutil.copytree(ROOT / "augment_policies", folder / "augment_policies")  # params checks the shipped ones
        cfg = {
            "ingest": {"source": "fashion-mnist", "classes": source, "max_bad_fraction": 1.0},
            "backbone": {"name": arch, "weights": str(weights.resolve())},
        }
        (folder / "params.yaml").write_text(yaml.safe_dump(cfg))
        steps = [
            ["ingest", "--out", "data/ingest", "--metrics", "m/ingest.json"],
            [
                "split",
                "--ingest",
                "data/ingest",
                "--embed",
                "data/embed",
                "--out",
                "data/split",
                "--metrics",
                "m/split.json",
            ]
            + ["--plots", "plots/split"],
            ["pretrain", "--split", "data/split", "--out", str(weights.resolve()), "--epochs", str(epochs)],
        ]
        for step in steps:
            subprocess.run([sys.executable, "-m", "pipeline", *step, "--params", "params.yaml"], cwd=folder, check=True)


def target(classes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train pixels, train labels, test pixels, test labels) of the five target classes."""
    from pipeline.core import dataset, params
    from pipeline.stages import ingest

    with tempfile.TemporaryDirectory(prefix="bench-few-target-") as tmp:
        out = Path(tmp) / "ingest"
        cfg = {"ingest": {"source": "fashion-mnist", "classes": classes, "max_bad_fraction": 1.0}}
        ingest.write(params.parse(cfg), out)
        df = dataset.read_manifest(out)[0]
        train, test = df[df["source_split"] == "train"], df[df["source_split"] == "test"]
        return (
            dataset.load_pixels(train),
            train["label_id"].to_numpy(),
            dataset.load_pixels(test),
            test["label_id"].to_numpy(),
        )


def main() -> None:
    import torch

    from pipeline.core import params
    from pipeline.learn import backbones, fit, inference, probe

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=ROOT / "build/bench/backbone.pt")
    ap.add_argument("--arch", default="timm:resnet18")
    ap.add_argument("--halves", choices=sorted(HALVES), default="yosinski")
    ap.add_argument("--pretrain-epochs", type=int, default=5)
    ap.add_argument("--labels", type=int, nargs="+", default=[5, 20, 100])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    source, classes = HALVES[args.halves]
    if not args.weights.is_file():
        t0 = time.perf_counter()
        pretrain(args.weights, args.arch, args.pretrain_epochs, source)
        print(f"pretrained {args.arch} in {time.perf_counter() - t0:.0f} s -> {args.weights}", flush=True)
    p = params.parse({"backbone": {"name": args.arch, "weights": str(args.weights)}})
    x, y, xt, yt = target(classes)
    loaded = backbones.load(p.backbone, 1)
    dev = torch.device("cpu")
    t0 = time.perf_counter()
    z = np.concatenate([backbones.features(loaded, x[i : i + 256], dev, True) for i in range(0, len(x), 256)])
    zt = np.concatenate([backbones.features(loaded, xt[i : i + 256], dev, True) for i in range(0, len(xt), 256)])
    embed_seconds = time.perf_counter() - t0
    rows = []
    for n in args.labels:
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            pick = np.concatenate([rng.choice(np.flatnonzero(y == k), n, replace=False) for k in range(len(classes))])
            cfg = fit.schedule(p.train, len(pick))
            result = {"labels_per_class": n, "seed": seed}
            t = time.perf_counter()
            scratch = fit.fit(fit.Inputs(x[pick], y[pick], x[:0], y[:0], len(classes)), cfg, seed, desc="scratch")
            acc = (inference.predict_proba(scratch.model, xt).argmax(1) == yt).mean()
            result["scratch"] = {"accuracy": round(float(acc), 4), "seconds": round(time.perf_counter() - t, 1)}
            t = time.perf_counter()
            pr = probe.fit(z[pick], y[pick], len(classes), p.oof.probe_c, seed)
            acc = (pr.predict_proba(zt).argmax(1) == yt).mean()
            result["probe"] = {"accuracy": round(float(acc), 4), "seconds": round(time.perf_counter() - t, 1)}
            t = time.perf_counter()
            model, width = backbones.for_training(p.backbone, 1, len(classes), torch.Generator().manual_seed(seed))
            tuned_cfg = cfg.model_copy(update={"model": args.arch, "width": width})
            tuned = fit.fit(
                fit.Inputs(x[pick], y[pick], x[:0], y[:0], len(classes), init=model), tuned_cfg, seed, desc="fine-tune"
            )
            acc = (inference.predict_proba(tuned.model, xt).argmax(1) == yt).mean()
            result["fine-tune"] = {"accuracy": round(float(acc), 4), "seconds": round(time.perf_counter() - t, 1)}
            rows.append(result)
            print(json.dumps(result), flush=True)
    summary = {}
    for n in args.labels:
        mine = [r for r in rows if r["labels_per_class"] == n]
        for row in ("scratch", "probe", "fine-tune"):
            accs = [r[row]["accuracy"] for r in mine]
            secs = [r[row]["seconds"] for r in mine]
            summary[f"{n}/{row}"] = {
                "mean": round(float(np.mean(accs)), 4),
                "sd": round(float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0, 4),
                "seconds": round(float(np.mean(secs)), 1),
            }
            print(f"{n:>4} labels/class {row:>9}: {summary[f'{n}/{row}']}", flush=True)
    if args.json:
        out = {"arch": args.arch, "halves": args.halves, "source": source, "target": classes}
        out |= {"weights": str(args.weights), "embed_seconds": round(embed_seconds, 1)}
        args.json.write_text(json.dumps(out | {"rows": rows, "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
