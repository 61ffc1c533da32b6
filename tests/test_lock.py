"""The installed venvs are exactly their locks (requirements/*.txt), so a release that lands after
the lock is made cannot change what `make run` and `make test` run on a fresh machine."""

from __future__ import annotations

import os
import re
import subprocess
import sys
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


def torch_pins() -> dict[str, str]:
    """What the Makefile installs before the lock: TORCH from make's environment, else its default."""
    spec = os.environ.get("TORCH") or re.search(r"^TORCH\s*\?=\s*(.+)$", (ROOT / "Makefile").read_text(), re.M)[1]
    return {canonical(n): v for n, v in (s.split("==") for s in spec.split())}


def torch_build(name: str) -> bool:
    """torch, torchvision and the GPU runtime they bring: the build's, not the lock's (Makefile's TORCH_BUILD)."""
    pattern = re.search(r"^TORCH_BUILD\s*:=\s*(\S+)$", (ROOT / "Makefile").read_text(), re.M)[1]
    return re.match(pattern, f"{name}==") is not None


def differences(installed: dict[str, str], locked: dict[str, str]) -> list[str]:
    got = installed.get
    changed = [f"{n}: locked {v}, installed {got(n, 'nothing')}" for n, v in locked.items() if got(n) != v]
    return changed + [f"{n}=={v}: installed, not in the lock" for n, v in installed.items() if n not in locked]


def test_project_venv_is_the_lock():
    installed = freeze(sys.executable)
    locked = read_lock(ROOT / "requirements" / "project.txt")
    diff = differences({n: v for n, v in installed.items() if not torch_build(n)}, locked)
    assert not diff, "the venv differs from requirements/project.txt (`make setup` rebuilds it):\n" + "\n".join(diff)
    for name, pin in torch_pins().items():
        got = installed.get(name, "nothing")
        assert got.split("+")[0] == pin, f"{name} {got}, Makefile's TORCH {pin}"
    assert not [n for n in locked if torch_build(n)], "the lock holds part of the torch build"


@pytest.mark.slow
def test_labelstudio_venv_is_the_lock():
    if not (VENV_LS / "bin" / "python").exists():
        pytest.fail(f"{VENV_LS} is missing: run `make labelstudio`", pytrace=False)
    diff = differences(freeze(VENV_LS / "bin" / "python"), read_lock(ROOT / "requirements" / "labelstudio.txt"))
    assert not diff, "the .venv-ls differs from requirements/labelstudio.txt (`make labelstudio`):\n" + "\n".join(diff)


def test_differences_names_each_kind_of_drift():
    drift = differences({"a": "1", "b": "3", "c": "1"}, {"a": "1", "b": "2", "d": "1"})
    assert drift == ["b: locked 2, installed 3", "d: locked 1, installed nothing", "c==1: installed, not in the lock"]
