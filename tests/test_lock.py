"""The installed venvs are exactly their locks (requirements/*.txt), so a release that lands after
the lock is made cannot change what `make run` and `make test` run on a fresh machine."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_LS = ROOT / ".venv-ls"


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonical(name)] = version
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def freeze(python: Path | str) -> dict[str, str]:
    out = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--all", "--exclude-editable"], capture_output=True, text=True, check=True
    ).stdout
    return {canonical(n): v for n, v in (line.split("==") for line in out.splitlines() if "==" in line)}


def torch_pin() -> str:
    """The torch the Makefile installs: TORCH from make's environment, else the Makefile's default."""
    spec = os.environ.get("TORCH") or re.search(r"^TORCH\s*\?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)[1]
    return spec.split("==")[1]


def differences(installed: dict[str, str], locked: dict[str, str]) -> list[str]:
    got = installed.get
    changed = [f"{n}: locked {v}, installed {got(n, 'nothing')}" for n, v in locked.items() if got(n) != v]
    return changed + [f"{n}=={v}: installed, not in the lock" for n, v in installed.items() if n not in locked]


def test_project_venv_is_the_lock():
    installed = freeze(sys.executable)
    torch = installed.pop("torch", None)
    # a CUDA build of torch (TORCH overridden) brings its own runtime packages: those may be extra
    extra_ok = {canonical(re.split(r"[ ;<>=!~\[]", r)[0]) for r in metadata.requires("torch") or []}
    locked = read_lock(ROOT / "requirements" / "project.txt")
    extra = {n for n in installed if n not in locked and n in extra_ok}
    diff = differences({n: v for n, v in installed.items() if n not in extra}, locked)
    assert not diff, "the venv differs from requirements/project.txt (`make setup` rebuilds it):\n" + "\n".join(diff)
    assert torch is not None and torch.split("+")[0] == torch_pin(), f"torch {torch}, Makefile's TORCH {torch_pin()}"


@pytest.mark.slow
def test_labelstudio_venv_is_the_lock():
    if not (VENV_LS / "bin" / "python").exists():
        pytest.fail(f"{VENV_LS} is missing: run `make labelstudio`", pytrace=False)
    diff = differences(freeze(VENV_LS / "bin" / "python"), read_lock(ROOT / "requirements" / "labelstudio.txt"))
    assert not diff, "the .venv-ls differs from requirements/labelstudio.txt (`make labelstudio`):\n" + "\n".join(diff)


def test_differences_names_each_kind_of_drift():
    drift = differences({"a": "1", "b": "3", "c": "1"}, {"a": "1", "b": "2", "d": "1"})
    assert drift == ["b: locked 2, installed 3", "d: locked 1, installed nothing", "c==1: installed, not in the lock"]
