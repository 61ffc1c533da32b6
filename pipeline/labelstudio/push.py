"""`label push`: send selected samples to a Label Studio project, with the model's suggestion.

Idempotent, keyed by `sample_id`: the project's tasks are listed first and only samples it
does not have are imported; the tasks it has get their prediction refreshed when it changed.
The server is the only state, so a push that was killed (or whose server died) midway is
finished by running it again: each import batch is one database transaction on the server,
and a batch whose fate is unknown is re-checked against the server before it is re-sent.

Images are written once as PNGs under the image folder and made reachable either through a
local-files storage (the server shares this disk: the folder must be inside the server's
LOCAL_FILES_DOCUMENT_ROOT) or by uploading them (`--images upload`, any server).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.core import artifacts, dataset, schema
from pipeline.core.console import log, progress
from pipeline.core.errors import PipelineError
from pipeline.labelstudio import config
from pipeline.labelstudio.client import AmbiguousError, UnavailableError

MIN_SIDE = 128  # PNGs are upscaled (nearest neighbour) to at least this many pixels a side


@dataclasses.dataclass
class PushOptions:
    project: str
    images: str = "auto"  # auto | local | upload
    image_dir: Path = Path(".pipeline/label-images")
    document_root: str | None = None
    annotators: int | None = None
    batch_size: int = 1000
    model_version: str = ""


def suggestion(row: pd.Series, classes: list[str]) -> tuple[str | None, float | None]:
    """The label to pre-fill and its score: `suggested_label` (with `suggested_score`, the
    probability the out-of-fold `probs` give it, or 1 - `label_score`), else the argmax of `probs`."""
    probs = row.get(artifacts.PROBS)
    probs = np.asarray(probs, dtype=float) if probs is not None and len(probs) == len(classes) else None
    label = row.get("suggested_label")
    if not isinstance(label, str) or label not in classes:
        if probs is None:
            return None, None
        label = classes[int(np.argmax(probs))]
    score = row.get("suggested_score")
    if score is None or pd.isna(score):
        if probs is not None:
            score = probs[classes.index(label)]
        elif row.get("label_score") is not None and not pd.isna(row.get("label_score")):
            score = 1.0 - float(row["label_score"])
    return label, (None if score is None or pd.isna(score) else round(float(score), 6))


def write_images(df: pd.DataFrame, image_dir: Path) -> int:
    """One PNG per sample, `<sample_id>.png`, written only when missing; returns how many."""
    image_dir.mkdir(parents=True, exist_ok=True)
    todo = df[[not (image_dir / f"{sid}.png").exists() for sid in df[schema.SAMPLE_ID]]]
    if todo.empty:
        return 0
    pixels = dataset.load_pixels(todo)
    scale = max(1, math.ceil(MIN_SIDE / max(pixels.shape[1:3])))
    for sid, img in zip(todo[schema.SAMPLE_ID], pixels):
        pil = Image.fromarray(img[:, :, 0] if img.shape[-1] == 1 else img)
        if scale > 1:
            pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
        tmp = image_dir / f".{sid}.png.tmp"
        pil.save(tmp, format="PNG")
        os.replace(tmp, image_dir / f"{sid}.png")
    return len(todo)


def ensure_project(client, opts: PushOptions, classes: list[str]) -> dict:
    label_config = config.labeling_config(classes)
    project = client.find_project(opts.project)
    if project is None:
        log.info("creating Label Studio project %r", opts.project)
        return client.create_project(
            title=opts.project,
            label_config=label_config,
            maximum_annotations=opts.annotators or 1,
            overlap_cohort_percentage=100,
            show_skip_button=True,
            description="Samples flagged by the pipeline; `python -m pipeline label pull` reads the answers.",
        )
    changes: dict = {}
    if project.get("label_config") != label_config:
        have = config.classes_of(project["label_config"])
        if have != classes:
            log.info(
                "project %r: class list changed (%d -> %d classes); updating its config",
                opts.project,
                len(have),
                len(classes),
            )
        changes["label_config"] = label_config
    if opts.annotators and project.get("maximum_annotations") != opts.annotators:
        changes.update(maximum_annotations=opts.annotators, overlap_cohort_percentage=100)
    return client.update_project(project["id"], **changes) if changes else project


def existing_tasks(client, pid: int) -> dict[str, list[int]]:
    """sample_id -> ids of the project's tasks that carry it (more than one is a duplicate)."""
    index: dict[str, list[int]] = {}
    for task in client.export(pid):
        sid = (task.get("data") or {}).get("sample_id")
        if sid is not None:
            index.setdefault(str(sid), []).append(task["id"])
    return index


def image_urls(client, pid: int, df: pd.DataFrame, opts: PushOptions) -> tuple[dict[str, str], str]:
    """sample_id -> the URL the labeling interface loads, and the mode used."""
    mode = opts.images
    if mode in ("auto", "local"):
        try:
            return _local_urls(client, pid, df, opts), "local"
        except UnavailableError:
            raise
        except PipelineError as e:
            if mode == "local":
                raise
            log.info("local files not usable (%s); uploading the images instead", e)
    if mode not in ("auto", "local", "upload"):
        raise PipelineError(f"--images must be one of auto, local, upload, got {mode!r}")
    return _upload_urls(client, pid, df, opts), "upload"


def _local_urls(client, pid: int, df: pd.DataFrame, opts: PushOptions) -> dict[str, str]:
    folder = opts.image_dir.resolve()
    root = opts.document_root or client.document_root(pid)
    if not root:
        raise PipelineError(
            "the server did not report its LOCAL_FILES_DOCUMENT_ROOT (local files "
            "serving off?); pass --document-root, or use --images upload"
        )
    root_path = Path(root).resolve()
    if root_path not in folder.parents:
        raise PipelineError(
            f"the image folder {folder} is not inside the server's document root "
            f"{root_path}; move --image-dir under it, or use --images upload"
        )
    if not any(Path(s["path"]).resolve() == folder for s in client.local_storages(pid)):
        client.create_local_storage(pid, str(folder))
    rel = folder.relative_to(root_path).as_posix()
    return {sid: f"/data/local-files/?d={quote(f'{rel}/{sid}.png')}" for sid in df[schema.SAMPLE_ID]}


def _upload_urls(client, pid: int, df: pd.DataFrame, opts: PushOptions, per_request: int = 100) -> dict[str, str]:
    def listing() -> dict[str, str]:
        # the server names an upload "<8 hex>-<original name>"
        return {Path(u["file"]).name.split("-", 1)[-1]: "/data/" + u["file"].lstrip("/") for u in client.uploads(pid)}

    have = listing()
    todo = [sid for sid in df[schema.SAMPLE_ID] if f"{sid}.png" not in have]
    for start in progress(range(0, len(todo), per_request), desc="upload", unit="batch"):
        names = [f"{sid}.png" for sid in todo[start : start + per_request]]
        client.upload_files(pid, [(n, (opts.image_dir / n).read_bytes()) for n in names])
    if todo:
        have = listing()
    return {sid: have[f"{sid}.png"] for sid in df[schema.SAMPLE_ID]}


def build_task(row: pd.Series, url: str, classes: list[str], model_version: str) -> dict:
    label, score = suggestion(row, classes)
    data = {
        "image": url,
        "sample_id": str(row[schema.SAMPLE_ID]),
        "label": "" if pd.isna(row[schema.LABEL]) else str(row[schema.LABEL]),  # "": an unlabeled (pool) sample
        "reason": str(row.get("reason", "")),
    }
    for column in ("split", "label_score", "hardness", "active_score"):
        if column in row and not pd.isna(row[column]):
            data[column] = row[column].item() if hasattr(row[column], "item") else row[column]
    task: dict = {"data": data}
    if label is not None:
        data["suggested_label"] = label
        task["predictions"] = [prediction(label, score, model_version)]
    return task


def prediction(label: str, score: float | None, model_version: str) -> dict:
    out = {"model_version": model_version, "result": config.choice_result(label)}
    if score is not None:
        out["score"] = score
    return out


def import_batches(client, pid: int, tasks: list[dict], batch_size: int) -> int:
    """Import in batches; a batch that failed midway is re-checked against the server, and only
    the samples it does not have are re-sent (bounded by the client's retry policy)."""
    created = 0
    for start in progress(range(0, len(tasks), batch_size), desc="import", unit="batch"):
        batch = tasks[start : start + batch_size]
        for attempt in range(client.retry.attempts):
            try:
                created += len(client.import_tasks(pid, batch))
                break
            except AmbiguousError as e:
                if attempt == client.retry.attempts - 1:
                    raise UnavailableError(
                        f"{e}; gave up after {attempt + 1} tries: run the same "
                        "push again to finish it (it creates no duplicates)"
                    ) from None
                wait = client.retry.wait(attempt)
                log.info("Label Studio: %s; checking what arrived, retry in %.1f s", e, wait)
                client.sleep(wait)
                have = existing_tasks(client, pid)
                batch = [t for t in batch if t["data"][schema.SAMPLE_ID] not in have]
                if not batch:
                    break
    return created


def refresh_predictions(client, pid: int, wanted: dict[int, dict]) -> int:
    """Replace the predictions of the tasks in `wanted` (task id -> prediction) that differ."""
    if not wanted:
        return 0
    current: dict[int, list[tuple]] = {}
    for p in client.predictions(pid):
        if p.get("task") in wanted:
            current.setdefault(p["task"], []).append(_key(p))
    stale = sorted(t for t, p in wanted.items() if current.get(t) != [_key(p)])
    for start in range(0, len(stale), 1000):
        chunk = stale[start : start + 1000]
        client.delete_predictions(pid, chunk)
        client.import_predictions(pid, [{**wanted[t], "task": t} for t in chunk])
    return len(stale)


def _key(p: dict) -> tuple:
    score = p.get("score")
    return (
        p.get("model_version") or "",
        None if score is None else round(float(score), 6),
        tuple(tuple(r.get("value", {}).get("choices", [])) for r in p.get("result") or []),
    )


def run(client, df: pd.DataFrame, classes: list[str], opts: PushOptions) -> dict:
    """Push the rows of `df` (already selected); returns the counts."""
    t0 = time.monotonic()
    project = ensure_project(client, opts, classes)
    pid = project["id"]
    have = existing_tasks(client, pid)
    duplicated = sum(len(v) > 1 for v in have.values())
    if duplicated:
        log.warning(
            "project %r has %d samples in more than one task (not made by this push); pull merges their answers",
            opts.project,
            duplicated,
        )
    new = df[~df[schema.SAMPLE_ID].isin(have.keys())]
    written = write_images(new, opts.image_dir)
    urls, mode = image_urls(client, pid, new, opts) if len(new) else ({}, "none")
    tasks = [build_task(row, urls[row[schema.SAMPLE_ID]], classes, opts.model_version) for _, row in new.iterrows()]
    created = import_batches(client, pid, tasks, opts.batch_size)
    wanted = {}
    for _, row in df[df[schema.SAMPLE_ID].isin(have.keys())].iterrows():
        label, score = suggestion(row, classes)
        if label is not None:
            for task_id in have[row[schema.SAMPLE_ID]]:
                wanted[task_id] = prediction(label, score, opts.model_version)
    refreshed = refresh_predictions(client, pid, wanted)
    pushed = wanted or any("predictions" in t for t in tasks)
    if pushed and project.get("model_version") != opts.model_version:
        # the server accepts a model version only once predictions carry it; the project's
        # version picks the predictions its labeling interface pre-fills
        client.update_project(pid, model_version=opts.model_version)
    counts = {
        "project_id": pid,
        "selected": int(len(df)),
        "created": created,
        "already_there": int(len(df) - len(new)),
        "predictions_refreshed": refreshed,
        "images_written": written,
        "image_mode": mode,
        "duplicates_on_server": duplicated,
        "model_version": opts.model_version,
        "seconds": round(time.monotonic() - t0, 2),
    }
    log.info(
        "pushed to project %r (id %d): %d new tasks, %d already there, %d predictions refreshed, images: %s",
        opts.project,
        pid,
        created,
        counts["already_there"],
        refreshed,
        mode,
    )
    return counts
