"""`label pull`: export a project's annotations, reach a consensus, write the label patch.

Writes `data/labels/patches.csv` (format: patches.py), merged over earlier pulls and sorted
by sample_id, then `dvc add`s it so `data/labels/patches.csv.dvc` tracks it (the clean stage
depends on it), and a summary (`metrics/labels.json`): what was dropped and why, the method,
and each annotator's quality. Annotators appear by their Label Studio user id only.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import dataset
from pipeline.console import log
from pipeline.errors import PipelineError
from pipeline.labelstudio import aggregate, config, patches
from pipeline.labelstudio.revision import git_revision


@dataclasses.dataclass
class PullOptions:
    project: str
    patches: Path = Path(patches.PATCHES)
    summary: Path | None = Path("metrics/labels.json")
    min_annotators: int = 1
    dvc: bool = True


def manifest_probs(manifest: pd.DataFrame | None, samples: np.ndarray, k: int) -> np.ndarray | None:
    """The manifest's `pred_probs` (out-of-fold probabilities) for `samples`, if it has them all."""
    if manifest is None or "pred_probs" not in manifest:
        return None
    probs = manifest.set_index("sample_id")["pred_probs"].reindex(samples)
    if probs.isna().any() or any(len(p) != k for p in probs):
        return None
    return np.stack([np.asarray(p, float) for p in probs])


def run(client, opts: PullOptions, manifest: pd.DataFrame | None = None,
        classes: list[str] | None = None) -> tuple[pd.DataFrame, dict]:
    project = client.find_project(opts.project)
    if project is None:
        raise PipelineError(f"no Label Studio project named {opts.project!r} "
                            "(push to it first: `python -m pipeline label push`)")
    classes = classes or config.classes_of(project["label_config"])
    tasks = client.export(project["id"])
    ans, counts = aggregate.answers(tasks, classes)
    per = ans.groupby("sample_id").size()
    few = per[per < opts.min_annotators].index
    ans = ans[~ans["sample_id"].isin(few)]
    counts["below_min_annotators"] = int(len(few))
    samples = np.sort(ans["sample_id"].unique())
    task_label = {str(t["data"]["sample_id"]): t["data"].get("label")
                  for t in tasks if (t.get("data") or {}).get("sample_id") is not None}
    counts["unresolved"] = int(len(set(task_label) - set(samples)))

    probs, source = manifest_probs(manifest, samples, len(classes)), "manifest pred_probs"
    if probs is None and len(samples):
        task_sample = {t["id"]: str(t["data"]["sample_id"]) for t in tasks
                       if (t.get("data") or {}).get("sample_id") is not None}
        probs, n = aggregate.probs_from_predictions(client.predictions(project["id"]), task_sample,
                                                    samples, classes)
        source = f"pushed prediction scores ({n} of {len(samples)} samples)"
    revision = git_revision()
    if len(samples):
        out, annotators, method = aggregate.consensus(ans, classes, probs)
    else:
        out, annotators, method = patches.empty(), pd.DataFrame(columns=["annotator"]), "none (no answers)"
    old = manifest.set_index("sample_id")["label"] if manifest is not None else pd.Series(dtype=object)
    out["old_label"] = [old.get(s, task_label.get(s)) for s in out["sample_id"]]
    out["revision"], out["project"] = revision, opts.project
    written = patches.write_patches(opts.patches, out)
    changed = int((out["label"] != out["old_label"]).sum())
    summary = {
        "project": opts.project, "revision": revision, "method": method,
        "probabilities": source if method == "crowdlab" else None,
        "counts": {**counts, "samples": int(len(out)), "changed": changed,
                   "confirmed": int(len(out) - changed), "patch_rows": int(len(written))},
        "annotators": {str(r.annotator): {"quality": round(float(r.quality), 6),
                                          "agreement": round(float(r.agreement), 6),
                                          "labeled": int(r.labeled)}
                       for r in annotators.itertuples()},
    }
    if opts.summary is not None:
        dataset.write_json(opts.summary, summary)
    log.info("pulled %d answers on %d samples from %r (%s): %d relabeled, %d confirmed; dropped "
             "%d skipped, %d unsure, %d empty; patch: %s (%d rows)", counts["usable"], len(out),
             opts.project, method, changed, len(out) - changed, counts["skipped"], counts["unsure"],
             counts["empty"], opts.patches, len(written))
    if opts.dvc:
        summary["dvc_tracked"] = dvc_track(opts.patches)
    return written, summary


def dvc_root(path: Path) -> Path | None:
    for folder in [path.resolve().parent, *path.resolve().parents]:
        if (folder / ".dvc").is_dir():
            return folder
    return None


def dvc_track(path: Path) -> bool:
    """`dvc add` the patch (so `<path>.dvc` tracks it); False when not inside a DVC repo."""
    root = dvc_root(Path(path))
    if root is None:
        log.info("%s: not inside a DVC repository; not tracked (dvc add skipped)", path)
        return False
    proc = subprocess.run([sys.executable, "-m", "dvc", "add", "-q",
                           str(Path(path).resolve().relative_to(root))],
                          cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise PipelineError(f"dvc add {path} failed: {lines[-1] if lines else proc.returncode}")
    log.info("%s is tracked by %s.dvc", path, path)
    return True
