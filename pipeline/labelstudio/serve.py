"""`label serve`: a local Label Studio for users who have no server.

It runs from its own virtual environment (`.venv-ls`, created on first use: label-studio's
pins clash with ours), bound to 127.0.0.1, with its database under `.pipeline/label-studio/`.
The API token is generated once into `.pipeline/label-studio-token` (mode 0600) and handed
to the server through its environment (not its command line, which `ps` shows); this module
prints where the token is, never the token itself. Local-files serving is on, rooted at the
project folder, so `label push` can serve `.pipeline/label-images/` without uploading it.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

from pipeline.core.errors import PipelineError

VENV = Path(".venv-ls")
STATE = Path(".pipeline")
TOKEN_FILE = STATE / "label-studio-token"
PASSWORD_FILE = STATE / "label-studio-password"
DATA_DIR = STATE / "label-studio"
# the exact set the server tests run against (`make lock` writes it); where the package is installed
# without its checkout, the two pins it is made from
LOCK = Path(__file__).resolve().parents[2] / "requirements" / "labelstudio.txt"
PACKAGES = ["label-studio==1.23.2", "sentry-sdk<3"]
USERNAME = "pipeline@localhost"
HOST = "127.0.0.1"


def executable(venv: Path = VENV) -> Path:
    return venv / "bin" / "label-studio"


def ensure_venv(venv: Path = VENV, install: bool = True) -> Path:
    exe = executable(venv)
    if exe.exists():
        return exe
    if not install:
        raise PipelineError(f"{exe} is missing: run `make labelstudio` (or drop --no-install)")
    print(f"installing Label Studio into {venv} (its own environment; a few minutes, once) ...", flush=True)
    pins = ["--no-deps", "-r", str(LOCK)] if LOCK.exists() else PACKAGES
    for cmd in (
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *pins],
    ):
        if subprocess.run(cmd).returncode != 0:
            raise PipelineError(f"could not install Label Studio into {venv} ({' '.join(cmd[-2:])} failed)")
    return exe


def secret(path: Path, nbytes: int = 20) -> str:
    """The secret in `path`, created (hex, mode 0600) when missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(nbytes) + "\n")
    return path.read_text().strip()


def server_env(
    data_dir: Path, document_root: Path, token: str, password: str, username: str = USERNAME
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY")}
    env.update(
        {
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir.resolve()),
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root.resolve()),
            "LABEL_STUDIO_USERNAME": username,
            "LABEL_STUDIO_PASSWORD": password,
            "LABEL_STUDIO_USER_TOKEN": token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            # offline and quiet: no version check, no analytics, no error reports, warnings only
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
            "LOG_LEVEL": "WARNING",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
        }
    )
    return env


def port_in_use(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start(
    port: int,
    data_dir: Path,
    document_root: Path,
    token: str,
    password: str,
    venv: Path = VENV,
    log_path: Path | None = None,
) -> subprocess.Popen:
    """Start the server in the background (its output to `log_path`); see `wait_ready`."""
    if port_in_use(port):
        raise PipelineError(f"port {port} on {HOST} is in use; pick another with --port")
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_path or data_dir / "server.log"
    out = open(log_path, "ab")
    cmd = [
        str(executable(venv)),
        "start",
        "--no-browser",
        "--port",
        str(port),
        "--internal-host",
        HOST,
        "--enable-legacy-api-token",
    ]
    return subprocess.Popen(
        cmd,
        env=server_env(data_dir, document_root, token, password),
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 600.0) -> str:
    """Block until the server answers /health; its URL. The first start migrates a database
    (about a minute)."""
    import requests

    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PipelineError(f"Label Studio exited with code {proc.returncode} while starting (see its log)")
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return url
        except requests.RequestException:
            pass
        time.sleep(1.0)
    raise PipelineError(f"Label Studio did not answer within {timeout:.0f} s (see its log)")


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve(port: int, document_root: Path, venv: Path = VENV, install: bool = True, detach: bool = False) -> int:
    ensure_venv(venv, install)
    token, password = secret(TOKEN_FILE), secret(PASSWORD_FILE, 12)
    proc = start(port, DATA_DIR, document_root, token, password, venv)
    print(f"starting Label Studio (log: {DATA_DIR / 'server.log'}) ...", flush=True)
    try:
        url = wait_ready(port, proc)
    except BaseException:
        stop(proc)
        raise
    print(
        f"""
Label Studio is running at {url}  (bound to {HOST} only)
  web UI login: {USERNAME}, password in {PASSWORD_FILE}
  API token: generated into {TOKEN_FILE} (mode 600) and given to the server at start-up;
  to use it from another shell in this folder:
    export LABEL_STUDIO_URL={url}
    export LABEL_STUDIO_API_KEY=$(cat {TOKEN_FILE})
  local files are served from {document_root.resolve()}
""",
        flush=True,
    )
    if detach:
        (STATE / "label-studio.pid").write_text(f"{proc.pid}\n")
        print(
            f"running in the background (pid {proc.pid}, also in {STATE / 'label-studio.pid'}); "
            f"stop it with: kill {proc.pid}"
        )
        return 0
    print("press Ctrl-C to stop it", flush=True)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop(proc)
        return 0
