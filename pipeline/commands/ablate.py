"""`python -m pipeline ablate`: what each data stage bought, through DVC's experiment queue.

The recipe (params `ablate.recipe`) gives, per data stage, the settings `with` it and `without` it. The rows are
"all" (every stage with), "none" (every stage without) and "no-<stage>" (all but that one); rows with the
same settings are run once (with one stage, "no-<stage>" is "none"). Each row runs with
`ablate.seeds` train seeds (`train.seed`: only training re-runs between seeds; the split, oof
and the data stages stay, so the spread is training noise) and `ablate.budget`, a small training
budget by default (12 epochs, at least 300 steps), so that it costs minutes on the user's own
data: its rows compare stages, they are not the shipped model. Every (row, seed) is one queued
experiment `abl-<row>-s<seed>`, run by `dvc exp run --run-all` (stages shared between rows come
from DVC's run cache).

`--collect` reads `dvc exp show --json` and writes `metrics/ablation.json`: per row, mean and std
over seeds of test accuracy, ECE and robust accuracy (the worst attack at the largest eps), the
difference from "all", and whether it exceeds the seed noise (more than two standard errors of the
difference of two means). The report stage shows it; `dvc repro` re-renders the report after a
collect.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.core import console, dataset
from pipeline.core.console import log
from pipeline.core.errors import PipelineError
from pipeline.core.params import Params
from pipeline.learn.fit import size_aware_epochs

OUT = "metrics/ablation.json"
PREFIX = "abl-"
METRICS = ("accuracy", "ece", "robust_accuracy", "robust_mean")
EPOCH_KEYS = ("epochs", "min_steps", "max_epochs")  # train's, as size_aware_epochs takes them


def rows(params: Params) -> dict[str, dict]:
    """{row name: the params it sets}, in order all, none, no-<stage>, without repeats of a setting.
    A pseudo entry counts only where there is a pool (an unlabeled folder or hidden labels)."""
    recipe = dict(params.ablate.recipe)
    settings = {**params.ablate.budget, **params.ablate.set}
    pool = (
        settings.get("ingest.unlabeled_path", params.ingest.unlabeled_path)
        or settings.get("ingest.keep_labels", params.ingest.keep_labels) < 1
    )
    if not pool and recipe.pop("pseudo", None) is not None:
        log.info("ablate: no unlabeled pool, so no pseudo row")
    if not recipe:
        raise PipelineError("ablate.recipe: no stage to switch (expected {stage: {with: {...}, without: {...}}})")
    for stage, sides in recipe.items():
        if missing := sorted({"with", "without"} - set(sides)):
            raise PipelineError(f"ablate.recipe.{stage}: expected both with and without, got no {missing[0]}")

    def row(off: set[str]) -> dict:
        out = dict(settings)
        for stage, sides in recipe.items():
            out.update(sides["without" if stage in off else "with"])
        return out

    candidates = {"all": row(set()), "none": row(set(recipe))}
    candidates |= {f"no-{stage}": row({stage}) for stage in recipe}
    out, seen = {}, set()
    for name, setting in candidates.items():
        key = json.dumps(setting, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out[name] = setting
    return out


def estimate(params: Params, n: int, times: Path = console.TIMES, train: Path = Path("metrics/train.json")) -> str:
    """ ", at most about N min on this machine" from the last `dvc repro`'s train and evaluate
    times, scaled to the budget's epochs (early stopping ends some sooner; the data stages a row
    changes run once per setting and are not counted); "" before any run."""
    if not (times.exists() and train.exists()):
        return ""
    seconds, last = json.loads(times.read_text()), json.loads(train.read_text())
    if not {"train", "evaluate"} <= set(seconds) or not last.get("epochs_run") or not last.get("n_train"):
        return ""
    budget = {**params.ablate.budget, **params.ablate.set}
    epochs, min_steps, cap = (budget.get(f"train.{k}", getattr(params.train, k)) for k in EPOCH_KEYS)
    n_rows = last.get("n_schedule", last["n_train"])  # a train.json before 2026-12-08 has no n_schedule
    epochs = size_aware_epochs(n_rows, params.train.batch_size, epochs, min_steps, cap)
    each = seconds["train"] / last["epochs_run"] * epochs + seconds["evaluate"]
    return f", at most about {n * each / 60:.0f} min on this machine ({each:.0f} s each, from the last run)"


def _value(v) -> str:
    return json.dumps(v) if isinstance(v, bool) else str(v)  # YAML's true/false, as `-S` parses them


def queue_commands(params: Params) -> list[list[str]]:
    """One `dvc exp run --queue` argv per (row, seed)."""
    out = []
    for name, setting in rows(params).items():
        for seed in range(params.ablate.seeds):
            sets = [a for k, v in {**setting, "train.seed": seed}.items() for a in ("-S", f"{k}={_value(v)}")]
            out.append(["exp", "run", "--queue", "-n", f"{PREFIX}{name}-s{seed}", *sets])
    return out


def dvc(args: list[str], capture: bool = False) -> str:
    """Run DVC (the one installed beside this Python); its last line as the error on failure."""
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=capture, text=True)
    if proc.returncode:
        last = ((proc.stderr or "").strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise PipelineError(f"dvc {' '.join(args[:3])}: {last}")
    return proc.stdout or ""


def experiments(shown: list[dict]) -> dict[str, dict]:
    """{experiment name: {metrics file: data}} of the ablation's experiments in `dvc exp show --json`.
    A name queued again after a failure is listed twice: the entry that evaluated wins."""
    out = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            name = exp.get("name") or ""
            if name.startswith(PREFIX):
                data = (exp.get("revs") or [{}])[0].get("data") or {}
                metrics = {path: m.get("data", {}) for path, m in (data.get("metrics") or {}).items()}
                if name not in out or figures(out[name]) is None:
                    out[name] = metrics
    return out


def figures(metrics: dict) -> dict | None:
    """accuracy, ece and robust accuracy (the worst attack at the largest eps, and the mean over every
    attack and eps: the worst case is often 0 for every row) of one experiment's metrics files;
    None if it did not evaluate."""
    ev = metrics.get("metrics/evaluate.json") or {}
    if "accuracy" not in ev:
        return None
    robust = {k: v for k, v in (ev.get("robustness") or {}).items() if k != "n"}
    eps = [float(k.rsplit("_eps", 1)[1]) for k in robust]
    worst = min((v for k, v in robust.items() if float(k.rsplit("_eps", 1)[1]) == max(eps)), default=None)
    mean = float(np.mean(list(robust.values()))) if robust else None
    return {"accuracy": ev["accuracy"], "ece": ev.get("ece"), "robust_accuracy": worst, "robust_mean": mean}


def table(runs: dict[str, dict]) -> dict:
    """metrics/ablation.json from {experiment name: metrics files}."""
    by_row: dict[str, list[dict]] = {}
    failed = []
    for name in sorted(runs):
        m = re.fullmatch(rf"{PREFIX}(.+)-s(\d+)", name)
        f = figures(runs[name]) if m else None
        if f is None:
            failed.append(name)
        else:
            by_row.setdefault(m.group(1), []).append(f)

    def stats(values: list) -> dict | None:
        v = np.array([x for x in values if x is not None], np.float64)
        if not len(v):
            return None
        return {"mean": round(float(v.mean()), 6), "std": round(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 6)}

    out = []
    for row, fs in by_row.items():
        out.append({"row": row, "n": len(fs), **{k: stats([f[k] for f in fs]) for k in METRICS}})
    ref = next((r for r in out if r["row"] == "all"), None)
    # the seed noise, pooled over rows (the same training noise in each): a std from 2 seeds alone
    # can be near 0 by chance, which would call any difference real
    dof = sum(r["n"] - 1 for r in out)
    pooled = float(np.sqrt(sum((r["n"] - 1) * r["accuracy"]["std"] ** 2 for r in out) / dof)) if dof else 0.0
    for r in out:
        if ref is None or r is ref:
            r["delta_accuracy"], r["beyond_noise"] = None, None
            continue
        r["delta_accuracy"] = round(r["accuracy"]["mean"] - ref["accuracy"]["mean"], 6)
        se = pooled * np.sqrt(1 / r["n"] + 1 / ref["n"])
        r["beyond_noise"] = bool(abs(r["delta_accuracy"]) > 2 * se) if se > 0 else None
    order = {"all": 0, "none": 1}
    out.sort(key=lambda r: (order.get(r["row"], 2), r["row"]))
    return {
        "rows": out,
        "metrics": list(METRICS),
        "seed_std": round(pooled, 6),
        "failed": failed,
        "note": "mean and std over train seeds (training noise only: split, oof and data stages fixed); "
        "beyond noise: |difference from all| > 2 standard errors of the difference of the means, "
        "with the seed std pooled over rows (none with a single seed per row).",
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--collect", action="store_true", help="read `dvc exp show --json` and write --out")
    p.add_argument("--run", action="store_true", help="after queueing, run the queue (`dvc exp run --run-all`)")
    p.add_argument("--dry-run", action="store_true", help="print the queue commands, queue nothing")
    p.add_argument("--jobs", type=int, default=1, help="queue workers for --run (default 1: one heavy job at a time)")
    p.add_argument("--out", default=OUT, help="collected table (default: %(default)s)")


def main(params: Params, args: argparse.Namespace) -> None:
    if not args.collect:
        commands = queue_commands(params)
        for argv in commands:
            if args.dry_run:
                print("dvc " + " ".join(argv))
            else:
                dvc(argv, capture=True)
        log.info(
            "ablate: %s %d experiments (%d rows x %d seeds), each trained with %s%s",
            "would queue" if args.dry_run else "queued",
            len(commands),
            len(commands) // params.ablate.seeds,
            params.ablate.seeds,
            ", ".join(f"{k}={_value(v)}" for k, v in params.ablate.budget.items()) or "the shipped budget",
            estimate(params, len(commands)),
        )
        if args.dry_run:
            return
        if not args.run:
            log.info("ablate: run them with `dvc exp run --run-all`, then `python -m pipeline ablate --collect`")
            return
        dvc(["exp", "run", "--run-all", "--jobs", str(args.jobs)])
    result = table(experiments(json.loads(dvc(["exp", "show", "--json"], capture=True) or "[]")))
    if not result["rows"]:
        raise PipelineError(f"no finished ablation experiment ({PREFIX}*) in `dvc exp show`; run the queue first")
    dataset.write_json(args.out, result)
    for r in result["rows"]:
        a = r["accuracy"]
        log.info(
            "ablate: %-16s n=%d accuracy %.4f +- %.4f  delta %s",
            r["row"],
            r["n"],
            a["mean"],
            a["std"],
            r["delta_accuracy"],
        )
    if result["failed"]:
        log.warning(
            "ablate: %d experiments without test metrics: %s", len(result["failed"]), ", ".join(result["failed"])
        )
    log.info("ablate: %s written; `dvc repro report` puts it in report/index.html", args.out)
