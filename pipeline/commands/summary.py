"""summary: the run in about ten lines, read from `metrics/*.json` (writes nothing).

What a person wants after `dvc repro`: how good the model is on test (with the binomial
interval), what happened to the data (kept / quarantined / removed / flagged, counts that add
up), what the stages warned about, where the model, plots and galleries are, and where the time
went (each stage's last wall time, from `.pipeline/stage_times.json`). `make run` ends with it;
`dvc metrics show` is the full, long form.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.core import console, metric_keys
from pipeline.core.errors import PipelineError
from pipeline.core.params import Params

# `dvc exp show --drop '.*' --keep KEEP`: the dozen columns people compare. DVC matches each column's
# name from its start; a metric whose name is in two files is named by its file.
KEEP = (
    "^(Experiment|Created|accuracy|macro_f1|ece|val_accuracy|metrics/oof.json:oof_accuracy|"
    "metrics/data_health.json:(estimated_noise_rate|quarantined)|train\\.epochs|train\\.mixup_alpha|augment\\.policy|clean\\.action)$"
)
EXP_SHOW = f"dvc exp show --drop '.*' --keep '{KEEP}'"


def _read(folder: Path, name: str) -> metric_keys.Metrics:
    path = folder / f"{name}.json"
    return metric_keys.Metrics(name, json.loads(path.read_text()) if path.exists() else {})


def lines(metrics: Path, plots: Path, times: Path = console.TIMES) -> list[str]:
    """The summary's lines; the last, where the time went, from `times` (written by each stage's run)."""
    names = ("ingest", "embed", "split", "oof", "clean", "pseudo", "assemble", "train", "evaluate")
    m = {n: _read(metrics, n) for n in names}
    if not m["ingest"]:
        raise PipelineError(f"{metrics}/ingest.json: no metrics yet; run `dvc repro` first")
    out = []
    i = m["ingest"]
    out.append(
        f"data      {i['in']} images in: {i['kept']} kept, {i['quarantined']} quarantined"
        + (f" {i['by_reason']}" if i["quarantined"] else "")
        + (f"; {i['skipped']} other files skipped {i['skipped_by_extension']}" if i.get("skipped") else "")
        + f"; {i['classes']} classes, {i['image_size']}x{i['image_size']} px, {i['channels']} channel(s)"
    )
    if (b := m["embed"]) and b.get("backbone"):
        out.append(
            f"backbone  {b['backbone']} ({b['weights']}) at {b['image_size']} px: {b['dim']} features of "
            f"{b['samples']} images in {b['seconds']:.0f} s ({b['device']}, {b['precision']}); "
            f"oof: {m['oof'].get('model')}"
        )
    if s := m["split"]:
        out.append(
            f"split     train {s['train']}, val {s['val']}, test {s['test']}"
            + (f", unlabeled {s['unlabeled']}" if s.get("unlabeled") else "")
            + f"; {s['removed']} removed "
            f"{s['removed_by_rule'] or ''}; duplicate sets {s['duplicates']['sets']}; "
            f"leaks across splits {sum(v for k, v in s.items() if k.startswith('cross_split_'))}; "
            f"suspected across splits {s.get('suspected', {}).get('pairs', 0)}"
        )
    if c := m["clean"]:
        flagged = ", ".join(f"{k} {v['total']}" for k, v in sorted(c["issues"].items()))
        trust = "" if c.get("oof_trusted", True) else " (weak: flags not to be trusted)"
        out.append(
            f"clean     oof accuracy {c.get('oof_accuracy', m['oof'].get('oof_accuracy', 0)):.3f}{trust}; "
            f"flagged {flagged}; action {c['action']}: {c['removed']} removed, {c['relabeled']} relabeled, "
            f"{c['patches']['applied']} human labels"
        )
    if (p := m["pseudo"]) and p.get("pool"):
        precision = f", precision {p['precision']}" if p.get("precision") is not None else ""
        out.append(
            f"pseudo    {p['kept']} of {p['pool']} unlabeled pseudo-labeled ({p['coverage']:.1%}) in "
            f"{len(p['rounds'])} round(s); estimated precision {p['estimated_precision']}{precision}"
        )
    if a := m["assemble"]:
        unused = f"; made, not trained on (assemble.use): {a['not_used']}" if a.get("not_used") else ""
        out.append(f"train set {a['total']} samples {a['by_origin']}{unused}")
    if t := m["train"]:
        out.append(f"training  best epoch {t['best_epoch']} of {t['epochs_run']}: val accuracy {t['val_accuracy']:.4f}")
    if e := m["evaluate"]:
        lo, hi = e.get("accuracy_ci95", [None, None])
        ci = f" (95% interval {lo:.3f}-{hi:.3f})" if lo is not None else ""
        robust = e.get("robustness", {})
        worst = min(((k, v) for k, v in robust.items() if k != "n"), key=lambda kv: kv[1], default=None)
        out.append(
            f"test      accuracy {e['accuracy']:.4f}{ci} on {e['n_test']} images; macro F1 "
            f"{e['macro_f1']:.4f}; ECE {e['ece']:.4f}"
            + (f"; under attack down to {worst[1]:.3f} ({worst[0]})" if worst else "")
        )
    galleries = sorted(str(p) for p in plots.glob("*/*.png") if "augment" not in p.parts)
    out.append("report    report/index.html: every stage on one page, offline; the model: models/model.pt")
    out.append(f"plots     {plots}/ (curves: dvc plots show); galleries: {', '.join(galleries) or 'none yet'}")
    out.append(f"compare   {EXP_SHOW}")
    if times.exists():
        took = json.loads(times.read_text())
        slowest = sorted(took.items(), key=lambda kv: -kv[1])
        out.append(
            f"time      {sum(took.values()):.0f} s in {len(took)} stages (their last runs); "
            + ", ".join(f"{k} {v:.0f} s" for k, v in slowest[:6])
        )
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics", default="metrics", help="the metrics folder (default: %(default)s)")
    p.add_argument("--plots", default="plots", help="the plots folder (default: %(default)s)")


def main(params: Params, args: argparse.Namespace) -> None:
    print("\n".join(lines(Path(args.metrics), Path(args.plots))))
