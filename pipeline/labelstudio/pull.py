"""`label pull`: export a project's annotations, reach a consensus, write the label patch.

Writes `labels/patches.csv` (format and why it lives in git: patches.py), merged over earlier
pulls and sorted by sample_id, and a summary (`metrics/labels.json`): what was dropped and why,
the method, and each annotator's quality. Annotators appear by their Label Studio user id only.
It ends by printing the `git add` / `git commit` that records the new labels.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core import artifacts, dataset, patches, schema
from pipeline.core.console import log
from pipeline.core.errors import PipelineError
from pipeline.labelstudio import answers, config
from pipeline.labelstudio.revision import git_revision
from pipeline.quality import consensus


@dataclasses.dataclass
class PullOptions:
    project: str
    patches: Path = Path(patches.PATCHES)
    summary: Path | None = Path("metrics/labels.json")
    min_annotators: int = 1


def manifest_probs(manifest: pd.DataFrame | None, samples: np.ndarray, k: int) -> np.ndarray | None:
    """The manifest's out-of-fold probabilities (`artifacts.PROBS`) for `samples`, if it has them all."""
    if manifest is None or artifacts.PROBS not in manifest:
        return None
    probs = manifest.set_index(schema.SAMPLE_ID)[artifacts.PROBS].reindex(samples)
    if probs.isna().any() or any(len(p) != k for p in probs):
        return None
    return np.stack([np.asarray(p, float) for p in probs])


def run(
    client, opts: PullOptions, manifest: pd.DataFrame | None = None, classes: list[str] | None = None
) -> tuple[pd.DataFrame, dict]:
    project = client.find_project(opts.project)
    if project is None:
        raise PipelineError(
            f"no Label Studio project named {opts.project!r} (push to it first: `python -m pipeline label push`)"
        )
    classes = classes or config.classes_of(project["label_config"])
    tasks = client.export(project["id"])
    ans, counts = answers.answers(tasks, classes)
    per = ans.groupby(schema.SAMPLE_ID).size()
    few = per[per < opts.min_annotators].index
    ans = ans[~ans[schema.SAMPLE_ID].isin(few)]
    counts["below_min_annotators"] = int(len(few))
    samples = np.sort(ans[schema.SAMPLE_ID].unique())
    task_label = {
        str(t["data"][schema.SAMPLE_ID]): t["data"].get("label")
        for t in tasks
        if (t.get("data") or {}).get("sample_id") is not None
    }
    counts["unresolved"] = int(len(set(task_label) - set(samples)))

    probs, source = manifest_probs(manifest, samples, len(classes)), "out-of-fold probabilities"
    if probs is None and len(samples):
        task_sample = {
            t["id"]: str(t["data"][schema.SAMPLE_ID])
            for t in tasks
            if (t.get("data") or {}).get("sample_id") is not None
        }
        probs, n = answers.probs_from_predictions(client.predictions(project["id"]), task_sample, samples, classes)
        source = f"pushed prediction scores ({n} of {len(samples)} samples)"
    revision = git_revision()
    if len(samples):
        out, annotators, method = consensus.consensus(ans, classes, probs)
    else:
        out, annotators, method = patches.empty(), pd.DataFrame(columns=["annotator"]), "none (no answers)"
    old = manifest.set_index(schema.SAMPLE_ID)[schema.LABEL] if manifest is not None else pd.Series(dtype=object)
    out["old_label"] = [old.get(s, task_label.get(s)) for s in out[schema.SAMPLE_ID]]
    out["revision"], out["project"] = revision, opts.project
    written = patches.write_patches(opts.patches, out)
    changed = int((out[schema.LABEL] != out["old_label"]).sum())
    summary = {
        "project": opts.project,
        "revision": revision,
        "method": method,
        "probabilities": source if method == "crowdlab" else None,
        "counts": {
            **counts,
            "samples": int(len(out)),
            "changed": changed,
            "confirmed": int(len(out) - changed),
            "patch_rows": int(len(written)),
        },
        "annotators": {
            str(r.annotator): {
                "quality": round(float(r.quality), 6),
                "agreement": round(float(r.agreement), 6),
                "labeled": int(r.labeled),
            }
            for r in annotators.itertuples()
        },
    }
    if opts.summary is not None:
        dataset.write_json(opts.summary, summary)
    log.info(
        "pulled %d answers on %d samples from %r (%s): %d relabeled, %d confirmed; dropped "
        "%d skipped, %d unsure, %d empty; patch: %s (%d rows)",
        counts["usable"],
        len(out),
        opts.project,
        method,
        changed,
        len(out) - changed,
        counts["skipped"],
        counts["unsure"],
        counts["empty"],
        opts.patches,
        len(written),
    )
    summary["commit_with"] = commit_command(opts, summary["counts"])
    print(f"label pull: {len(written)} patched labels in {opts.patches}; record them with:\n  {summary['commit_with']}")
    return written, summary


def commit_command(opts: PullOptions, counts: dict) -> str:
    """The git step that records the patch (and its summary) in the project's history."""
    files = " ".join(shlex.quote(str(p)) for p in (opts.patches, opts.summary) if p is not None)
    message = (
        f"labels: pull {opts.project} ({counts['samples']} samples, {counts['changed']} relabeled, "
        f"{counts['confirmed']} confirmed)"
    )
    return f"git add {files} && git commit -m {shlex.quote(message)}"
