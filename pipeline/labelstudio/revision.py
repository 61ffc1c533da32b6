"""Which code and data a prediction or a patch came from: git revision plus data hash.

Never a URL, a host or a token: these strings land in Label Studio and in DVC-tracked files.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path


def git_revision(cwd: str | Path = ".") -> str:
    """`git rev-parse --short HEAD`, plus `-dirty` when tracked files changed; `nogit` outside git."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)

    try:
        head = git("rev-parse", "--short", "HEAD")
    except OSError:
        return "nogit"
    if head.returncode != 0:
        inside = git("rev-parse", "--is-inside-work-tree")
        return "uncommitted" if inside.returncode == 0 else "nogit"
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")


def data_revision(path: str | Path) -> str:
    """The first 8 hex digits of the file's MD5 (the hash DVC keeps for it)."""
    md5 = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            md5.update(block)
    return md5.hexdigest()[:8]


def model_version(manifest: str | Path) -> str:
    """`<git revision>+<manifest hash>`: the `model_version` of pushed predictions."""
    return f"{git_revision()}+{data_revision(manifest)}"
