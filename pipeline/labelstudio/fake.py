"""An in-memory Label Studio with `Client`'s high-level interface, for unit tests.

It keeps projects, tasks (each import batch is all-or-nothing, as on the server), predictions,
annotations, local storages and uploads. `fail` lets a test inject a failure before a named
call: `fake.fail["import_tasks"] = [AmbiguousError("x")]` raises once, then works.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.labelstudio.client import Retry


class FakeClient:
    def __init__(self, document_root: str | None = None, retry: Retry = Retry(backoff=0.0)):
        self.retry = retry
        self.root = document_root
        self.projects: dict[int, dict] = {}
        self.tasks: dict[int, dict] = {}
        self.preds: dict[int, dict] = {}
        self.storages: list[dict] = []
        self.files: list[dict] = []
        self.calls: list[str] = []
        self.fail: dict[str, list[Exception]] = {}
        self.slept: list[float] = []
        self._ids = itertools.count(1)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)

    def _call(self, name: str) -> None:
        self.calls.append(name)
        queue = self.fail.get(name)
        if queue:
            raise queue.pop(0)

    def find_project(self, title):
        self._call("find_project")
        return next((copy.deepcopy(p) for p in self.projects.values() if p["title"] == title), None)

    def create_project(self, **fields):
        self._call("create_project")
        if len(fields.get("title", "")) < 3:
            raise PipelineError("Label Studio rejected the project creation (HTTP 400): title too short")
        pid = next(self._ids)
        self.projects[pid] = {"id": pid, "maximum_annotations": 1, **fields}
        return copy.deepcopy(self.projects[pid])

    def update_project(self, pid, **fields):
        self._call("update_project")
        version = fields.get("model_version")
        if version and not any(p["model_version"] == version for p in self.preds.values() if p["project"] == pid):
            raise PipelineError(
                "Label Studio rejected the project update (HTTP 400): Model version "
                "doesn't exist either as live model or as static predictions."
            )
        self.projects[pid].update(fields)
        return copy.deepcopy(self.projects[pid])

    def export(self, pid):
        self._call("export")
        return [
            {**copy.deepcopy(t), "predictions": [i for i, p in self.preds.items() if p["task"] == t["id"]]}
            for t in self.tasks.values()
            if t["project"] == pid
        ]

    def import_tasks(self, pid, tasks):
        self._call("import_tasks")
        ids = []
        for t in tasks:
            tid = next(self._ids)
            self.tasks[tid] = {"id": tid, "project": pid, "data": copy.deepcopy(t["data"]), "annotations": []}
            for p in t.get("predictions", []):
                self._add_prediction(pid, tid, p)
            ids.append(tid)
        return ids

    def _add_prediction(self, pid, tid, p):
        pred_id = next(self._ids)
        self.preds[pred_id] = {**copy.deepcopy(p), "id": pred_id, "task": tid, "project": pid}

    def predictions(self, pid):
        self._call("predictions")
        return [copy.deepcopy(p) for p in self.preds.values() if p["project"] == pid]

    def delete_predictions(self, pid, task_ids):
        self._call("delete_predictions")
        gone = set(task_ids)
        self.preds = {i: p for i, p in self.preds.items() if p["task"] not in gone}

    def import_predictions(self, pid, predictions):
        self._call("import_predictions")
        for p in predictions:
            self._add_prediction(pid, p["task"], {k: v for k, v in p.items() if k != "task"})

    def document_root(self, pid):
        self._call("document_root")
        return self.root

    def local_storages(self, pid):
        self._call("local_storages")
        return [s for s in self.storages if s["project"] == pid]

    def create_local_storage(self, pid, path):
        self._call("create_local_storage")
        if self.root is None or Path(self.root).resolve() not in Path(path).resolve().parents:
            raise PipelineError("Label Studio rejected the local-files storage (HTTP 400): not under root")
        self.storages.append({"project": pid, "path": path})
        return self.storages[-1]

    def uploads(self, pid):
        self._call("uploads")
        return [f for f in self.files if f["project"] == pid]

    def upload_files(self, pid, files):
        self._call("upload_files")
        for name, data in files:
            n = next(self._ids)
            self.files.append({"project": pid, "file": f"upload/{pid}/{n:08x}-{name}", "size": len(data)})

    def create_annotation(self, task_id, result, completed_by=None, was_cancelled=False):
        self._call("create_annotation")
        a = {"id": next(self._ids), "result": result, "completed_by": completed_by, "was_cancelled": was_cancelled}
        self.tasks[task_id]["annotations"].append(a)
        return a
