"""Transfer within Fashion-MNIST (the split-class protocol of Yosinski et al. 2014): pretrain a
backbone on five classes, then find the label issues of the other five, under 10% symmetric noise,
with a linear probe on its features (`oof.model: probe`) against the fold CNNs learned from
scratch (the defaults), in one run on one machine.

    python bench/bench_transfer.py --json bench/transfer_results.json
    python bench/bench_transfer.py --backbone small_cnn --pretrain-epochs 5

Steps, each as `python -m pipeline <stage>` in a scratch folder (bench_oof_clean.py's runner):
source: ingest (the five source classes) -> split -> pretrain; target: ingest (the other five,
10% of train labels flipped) -> embed -> split, then oof -> clean once per row. Reports seconds
per step and label-issue precision / recall / F1 on the target's train rows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import bench_oof_clean as runner  # its stage runner and flags
import yaml
from bench_oof_clean import ROOT, stage, with_sets

SOURCE = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
TARGET = ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
runner.FLAGS["embed"] = ["--ingest", "data/ingest", "--out", "data/embed", "--metrics", "metrics/embed.json"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="timm:resnet18")
    ap.add_argument("--pretrain-epochs", type=int, default=5)
    ap.add_argument("--set", nargs="*", default=[], help="more params for every step, key=value")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    common = ["ingest.source=fashion-mnist", "ingest.max_bad_fraction=1.0", f"backbone.name={args.backbone}"]
    common += ["backbone.weights=models/backbone.pt", *args.set]
    results = {"backbone": args.backbone, "pretrain_epochs": args.pretrain_epochs, "set": args.set}
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
        folder = Path(tmp)
        for name in ("pipeline", "augment_policies", "labels"):
            shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))

        def params(name: str, sets: list[str]) -> Path:
            file = folder / f"params-{name}.yaml"
            file.write_text(yaml.safe_dump(with_sets(shipped, common + sets), sort_keys=False))
            return file

        src = params("source", [f"ingest.classes={json.dumps(SOURCE)}"])
        seconds = {name: stage(folder, name, src) for name in ("ingest", "split")}
        t0 = time.perf_counter()
        runner.FLAGS["pretrain"] = ["--split", "data/split", "--out", "models/backbone.pt"]
        runner.FLAGS["pretrain"] += ["--epochs", str(args.pretrain_epochs)]
        stage(folder, "pretrain", src)
        seconds["pretrain"] = round(time.perf_counter() - t0, 1)
        results["source_seconds"] = seconds
        print(f"source: {seconds}", flush=True)
        noise = ["clean.inject_noise.rate=0.1", "clean.inject_noise.kind=symmetric"]
        tgt = params("target", [f"ingest.classes={json.dumps(TARGET)}", *noise])
        shared = {name: stage(folder, name, tgt) for name in ("ingest", "embed", "split")}
        results["embed"] = json.loads((folder / "metrics/embed.json").read_text())
        for row, sets in {"fold CNNs (scratch)": [], "probe": ["oof.model=probe"]}.items():
            file = params(row.split()[0], [f"ingest.classes={json.dumps(TARGET)}", *noise, *sets])
            seconds = dict(shared) | {name: stage(folder, name, file) for name in ("oof", "clean")}
            if row == "fold CNNs (scratch)":
                seconds.pop("embed")  # the scratch path does not need it
            clean = json.loads((folder / "metrics/clean.json").read_text())
            oof = json.loads((folder / "metrics/oof.json").read_text())
            total = round(sum(seconds.values()), 1)
            d = clean.get("detection") or {}
            results[row] = {"seconds": seconds, "total_seconds": total, "detection": d, "oof": oof}
            print(
                f"{row}: {total:.0f} s {seconds}, label-issue F1 {d.get('f1')} (P {d.get('precision')}, "
                f"R {d.get('recall')}), oof accuracy {oof.get('oof_accuracy')}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
