"""A small Label Studio REST client: bounded retries with backoff, failures on one line.

The server and the token come from `LABEL_STUDIO_URL` and `LABEL_STUDIO_API_KEY` only, and
neither is ever put into a message, a log line or an exception: errors name the variable,
not its value, and the text of `requests`' own exceptions (which carries the host) is never
shown. `requests` is imported here, lazily, so `python -m pipeline split` never loads it.

Retries: connection errors, timeouts, 429 and 5xx are retried with exponential backoff, a
bounded number of times. A request that creates something (`unsafe=True`) is retried only
when it surely never reached the server (connection refused, connect timeout, 503); when it
may have (read timeout, dropped connection, 500) an `AmbiguousError` is raised at once so
the caller can look at the server's state before trying again (see `push.import_batches`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from typing import Any, Callable

from pipeline.core.console import log
from pipeline.core.errors import PipelineError

ENV_URL = "LABEL_STUDIO_URL"
ENV_KEY = "LABEL_STUDIO_API_KEY"
EXIT_UNAVAILABLE = 3


class UnavailableError(PipelineError):
    """The server could not be reached, or kept failing, after every retry."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=EXIT_UNAVAILABLE)


class AmbiguousError(UnavailableError):
    """A creating request failed in a way that leaves unknown whether the server applied it."""


@dataclasses.dataclass(frozen=True)
class Retry:
    attempts: int = 5  # tries in all
    backoff: float = 0.5  # first wait in seconds, doubled after each try
    max_wait: float = 8.0
    connect_timeout: float = 5.0
    read_timeout: float = 120.0

    def wait(self, attempt: int) -> float:
        return min(self.max_wait, self.backoff * 2**attempt)


def _requests():
    try:
        import requests
    except ImportError:  # pragma: no cover - requests ships with dvc
        raise PipelineError("the Label Studio client needs `requests`: pip install -e '.[labelstudio]'") from None
    # urllib3 logs every request with its host and port at DEBUG: keep the server out of logs
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    return requests


def _reason(exc: Exception) -> tuple[str, bool]:
    """(a short reason without host or URL, whether the request may have reached the server)."""
    requests = _requests()
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connection timed out", False
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return "no answer before the read timeout", True
    text = repr(exc)
    if "NewConnectionError" in text or "Connection refused" in text:
        return "connection refused", False
    if "NameResolutionError" in text or "Name or service not known" in text:
        return "host name not resolved", False
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "connection dropped", True
    return type(exc).__name__, True


def _is_jwt(token: str) -> bool:
    return token.count(".") == 2 and len(token) > 40


class Client:
    """The calls the push and pull stages make; `FakeClient` (fake.py) has the same ones."""

    def __init__(
        self,
        url: str,
        token: str,
        retry: Retry = Retry(),
        session: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not url.startswith(("http://", "https://")):
            raise PipelineError(f"{ENV_URL} must start with http:// or https://")
        self._url = url.rstrip("/")
        self._token = token
        self._access: str | None = None  # for a personal access token (a JWT refresh token)
        self.retry = retry
        self._session = session if session is not None else _requests().Session()
        self.sleep = sleep

    @classmethod
    def from_env(cls, retry: Retry = Retry()) -> "Client":
        url, token = os.environ.get(ENV_URL, ""), os.environ.get(ENV_KEY, "")
        missing = [k for k, v in ((ENV_URL, url), (ENV_KEY, token)) if not v]
        if missing:
            raise PipelineError(
                f"set {' and '.join(missing)} in the environment "
                "(`python -m pipeline label serve` starts a local server)"
            )
        return cls(url, token, retry)

    def _scrub(self, text: str) -> str:
        for secret in (self._token, self._access, self._url):
            if secret:
                text = text.replace(secret, "***")
        return text

    def _auth(self) -> dict[str, str]:
        if _is_jwt(self._token):
            if self._access is None:
                self._access = self.request(
                    "POST", "/api/token/refresh/", json={"refresh": self._token}, what="the token refresh", auth=False
                )["access"]
            return {"Authorization": f"Bearer {self._access}"}
        return {"Authorization": f"Token {self._token}"}

    def request(
        self,
        method: str,
        path: str,
        *,
        what: str = "the request",
        unsafe: bool = False,
        raw: bool = False,
        auth: bool = True,
        accept: tuple[int, ...] = (),
        **kwargs,
    ) -> Any:
        """One API call; JSON back (the response itself when `raw`, or when its status is in
        `accept`). `path` starts with /api/."""
        timeout = (self.retry.connect_timeout, self.retry.read_timeout)
        reason, started, refreshed = "", time.monotonic(), False
        for attempt in range(self.retry.attempts):
            if attempt:
                wait = self.retry.wait(attempt - 1)
                log.info("Label Studio: %s; retry %d/%d in %.1f s", reason, attempt, self.retry.attempts - 1, wait)
                self.sleep(wait)
            headers = self._auth() if auth else {}
            try:
                r = self._session.request(method, self._url + path, headers=headers, timeout=timeout, **kwargs)
            except _requests().RequestException as e:
                reason, maybe_sent = _reason(e)
                if unsafe and maybe_sent:
                    raise AmbiguousError(f"{what} failed midway ({reason})") from None
                continue
            code = r.status_code
            if code in (401, 403):
                if _is_jwt(self._token) and auth and not refreshed:
                    self._access, refreshed, reason = None, True, "access token expired"
                    continue
                raise PipelineError(
                    f"Label Studio refused the token in {ENV_KEY} (HTTP {code}) during {what}; "
                    "check that it is your account's access token and that the server accepts it"
                )
            if code == 429 or code >= 500:
                reason = f"HTTP {code}"
                if unsafe and code not in (429, 503):
                    raise AmbiguousError(f"{what} failed midway ({reason})")
                continue
            if code in accept:
                return r
            if code >= 400:
                raise PipelineError(f"Label Studio rejected {what} (HTTP {code}): {self._detail(r)}")
            if raw:
                return r
            return r.json() if r.content else None
        raise UnavailableError(
            f"the Label Studio server ({ENV_URL}) is unavailable: {reason} after "
            f"{self.retry.attempts} tries over {time.monotonic() - started:.0f} s; is it running?"
        )

    def _detail(self, r: Any) -> str:
        try:
            body = r.json()
            if isinstance(body, dict):
                body = body.get("validation_errors") or body.get("detail") or body
            text = json.dumps(body) if not isinstance(body, str) else body
        except ValueError:
            text = r.text
        text = " ".join(self._scrub(text).split())
        return text[:300] + ("..." if len(text) > 300 else "")

    # --- projects ---------------------------------------------------------------------------

    def find_project(self, title: str) -> dict | None:
        page = 1
        while True:
            body = self.request(
                "GET", "/api/projects", params={"title": title, "page": page, "page_size": 100}, what="the project list"
            )
            rows = body["results"] if isinstance(body, dict) else body
            for p in rows:
                if p["title"] == title:
                    return p
            if not isinstance(body, dict) or not body.get("next"):
                return None
            page += 1

    def create_project(self, **fields) -> dict:
        return self.request("POST", "/api/projects", json=fields, what="the project creation", unsafe=True)

    def update_project(self, pid: int, **fields) -> dict:
        return self.request("PATCH", f"/api/projects/{pid}", json=fields, what="the project update")

    # --- tasks and predictions --------------------------------------------------------------

    def export(self, pid: int) -> list[dict]:
        """Every task of the project with its data and annotations (predictions as ids).

        Through an export snapshot rather than `/export?exportType=JSON`: the snapshot
        prefetches annotations and drafts, which makes it about twice as fast on large projects.
        """
        options = {
            "drafts": {"only_id": True},
            "predictions": {"only_id": True},
            "annotations__completed_by": {"only_id": True},
            "include_annotation_history": False,
        }
        snap = self.request(
            "POST",
            f"/api/projects/{pid}/exports/",
            what="the export",
            json={
                "title": "pipeline label",
                "serialization_options": options,
                "task_filter_options": {"only_with_annotations": False},
            },
        )
        base = f"/api/projects/{pid}/exports/{snap['id']}"
        deadline = time.monotonic() + self.retry.read_timeout
        while snap.get("status") not in ("completed", "failed") and time.monotonic() < deadline:
            self.sleep(0.5)  # servers with a job queue build the snapshot in the background
            snap = self.request("GET", base, what="the export")
        if snap.get("status") != "completed":
            raise UnavailableError(f"the export snapshot did not complete (status {snap.get('status')!r})")
        tasks = self.request("GET", f"{base}/download", params={"exportType": "JSON"}, what="the export")
        self.request("DELETE", base, what="the export clean-up", raw=True)
        return tasks

    def import_tasks(self, pid: int, tasks: list[dict]) -> list[int]:
        body = self.request(
            "POST",
            f"/api/projects/{pid}/import",
            params={"return_task_ids": "true"},
            json=tasks,
            what="the task import",
            unsafe=True,
        )
        return list(body.get("task_ids", []))

    def predictions(self, pid: int) -> list[dict]:
        return self.request("GET", "/api/predictions/", params={"project": pid}, what="the prediction list")

    def delete_predictions(self, pid: int, task_ids: list[int]) -> None:
        self.request(
            "POST",
            "/api/dm/actions",
            params={"id": "delete_tasks_predictions", "project": pid},
            json={"selectedItems": {"all": False, "included": list(task_ids)}},
            what="the prediction clean-up",
        )

    def import_predictions(self, pid: int, predictions: list[dict]) -> None:
        self.request(
            "POST",
            f"/api/projects/{pid}/import/predictions",
            json=predictions,
            what="the prediction import",
            unsafe=True,
        )

    # --- images: local-files storage or uploads ---------------------------------------------

    def document_root(self, pid: int) -> str | None:
        """The server's LOCAL_FILES_DOCUMENT_ROOT, read from its answer to validating "/"."""
        r = self.request(
            "POST",
            "/api/storages/localfiles/validate",
            json={"project": pid, "path": "/"},
            what="the document-root probe",
            raw=True,
            accept=(400,),
        )
        found = re.search(r'LOCAL_FILES_DOCUMENT_ROOT="([^"]*)"', r.text.replace('\\"', '"'))
        return found.group(1) if found else None

    def local_storages(self, pid: int) -> list[dict]:
        return self.request("GET", "/api/storages/localfiles", params={"project": pid}, what="the storage list")

    def create_local_storage(self, pid: int, path: str) -> dict:
        # regex "^$" matches no file: a "Sync" in the UI must not create one task per PNG
        return self.request(
            "POST",
            "/api/storages/localfiles",
            what="the local-files storage",
            json={
                "project": pid,
                "path": path,
                "regex_filter": "^$",
                "use_blob_urls": True,
                "title": "pipeline images",
            },
        )

    def uploads(self, pid: int) -> list[dict]:
        return self.request("GET", f"/api/projects/{pid}/file-uploads", params={"all": "true"}, what="the upload list")

    def upload_files(self, pid: int, files: list[tuple[str, bytes]]) -> None:
        self.request(
            "POST",
            f"/api/projects/{pid}/import",
            params={"commit_to_project": "false"},
            files=[(name, (name, data, "image/png")) for name, data in files],
            what="the image upload",
        )

    # --- annotations (the tests' simulated annotators use these) -----------------------------

    def create_user(self, email: str) -> dict:
        return self.request(
            "POST",
            "/api/users/",
            json={"email": email, "username": email.split("@")[0]},
            what="the user creation",
            unsafe=True,
        )

    def create_annotation(
        self, task_id: int, result: list[dict], completed_by: int | None = None, was_cancelled: bool = False
    ) -> dict:
        body: dict[str, Any] = {"result": result, "was_cancelled": was_cancelled}
        if completed_by is not None:
            body["completed_by"] = completed_by
        return self.request("POST", f"/api/tasks/{task_id}/annotations/", json=body, what="the annotation", unsafe=True)
