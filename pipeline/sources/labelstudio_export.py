"""The `labelstudio` source: a Label Studio JSON export, each task's image with its answers' majority."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.core.params import Ingest
from pipeline.sources.items import Item, file_item, outside, required_path

UNSURE = "unsure"  # the Label Studio answer that is no label (pipeline.labelstudio.config's)

LOCAL_FILES, UPLOADS = "/data/local-files/?d=", "/data/"  # how Label Studio serves images


def labelstudio(cfg: Ingest) -> tuple[list[Item], list[str]]:
    """A Label Studio JSON export (Export -> JSON): each task's image (`data.image`, or its only
    value), labeled with the majority of its answers (skips, "unsure" and empty answers do not
    count; ties go to the answer given first); a task without one is unlabeled. An image reference
    is a path under `ingest.document_root` (default: the export's folder), as Label Studio's local
    files (`/data/local-files/?d=<path>`), an upload (`/data/upload/...`: set document_root to
    Label Studio's media folder) or a plain relative path; a URL cannot be fetched offline."""
    from collections import Counter
    from urllib.parse import unquote

    export = required_path(cfg, "a Label Studio JSON export (a .json file)")
    try:
        tasks = json.loads(export.read_text())
    except (OSError, ValueError) as e:
        raise PipelineError(f"{export}: cannot read as JSON: {e}".splitlines()[0]) from None
    if not isinstance(tasks, list):
        got = type(tasks).__name__
        raise PipelineError(f"{export}: expected a list of tasks (Label Studio's JSON export), got a {got}")
    root = Path(cfg.document_root) if cfg.document_root else export.parent
    real_root = os.path.realpath(root)
    items = []
    for n, task in enumerate(tasks):
        data = task.get("data") if isinstance(task, dict) else None
        where = f"task {task.get('id', n) if isinstance(task, dict) else n}"
        values = [v for v in (data or {}).values() if isinstance(v, str)]
        ref = (data or {}).get("image", values[0] if len(values) == 1 else None)
        if not isinstance(ref, str) or not ref:
            items.append(Item(path=f"<{where}>", reason="missing_path", detail=f"{where}: no data.image"))
            continue
        if ref.startswith(("http://", "https://", "s3://", "gs://")):
            items.append(Item(path=ref, reason="remote_url", detail=f"{where}: a URL; export with local files"))
            continue
        rel = unquote(ref.removeprefix(LOCAL_FILES)) if ref.startswith(LOCAL_FILES) else ref.removeprefix(UPLOADS)
        rel = os.path.normpath(rel.lstrip("/")).replace(os.sep, "/")
        if outside(os.path.realpath(root / rel), real_root):
            items.append(Item(path=rel, reason="outside_root", detail=f"{where}: resolves outside {root}"))
            continue
        votes = Counter(
            choice[0]
            for a in task.get("annotations") or []
            if not a.get("was_cancelled")
            for r in a.get("result") or []
            if (choice := (r.get("value") or {}).get("choices")) and choice[0] != UNSURE
        )
        label = votes.most_common(1)[0][0] if votes else None  # most_common keeps first-seen order on ties
        group = data.get("group") if isinstance(data.get("group"), str) else None
        items.append(file_item(str(root / rel), rel, real_root, label=label, group=group))
    return items, sorted({it.label for it in items if it.label})
