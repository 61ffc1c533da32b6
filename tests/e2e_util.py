"""Helpers for the tests that run the real pipeline under DVC in a temporary git repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.core import catalog

ROOT = Path(__file__).resolve().parents[1]
STAGES = list(catalog.STAGES)


def run(cmd: list[str], cwd: Path, stderr: bool = True) -> str:
    """`cmd`'s output (stdout, then stderr unless `stderr` is False); fails the test when it fails."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PIPELINE_QUIET": "1",
        "DVC_NO_ANALYTICS": "1",
    }
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + (proc.stderr if stderr else "")


def ran(output: str) -> list[str]:
    return [s for s in STAGES if re.search(rf"Running stage '{s}'", output)]


def set_params(project: Path, **sections: dict) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        params.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def make_project(dest: Path, tiny: bool = True, **params: dict) -> Path:
    """A copy of the project in a fresh git repository at `dest`, with tiny training params
    (or, `tiny=False`, the shipped defaults), then `params` on top."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in [
        "pipeline",
        "augment_policies",
        "labels",
        "metrics/ablation.json",
        "dvc.yaml",
        "params.yaml",
        ".dvc/config",
        ".dvcignore",
        ".gitignore",
    ]:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest / name)
    if tiny:
        set_params(
            dest,
            train={"epochs": 2, "min_steps": 0},
            adversarial={"source_epochs": 2},
            oof={"epochs": 2, "min_steps": 0},
            policy_search={"candidates": 16, "max_samples": 128},
            # 2-epoch judges are near uniform (max p ~0.13 of 10 classes): tau just above chance
            synthesize={"per_class": 10, "vae": {"epochs": 15}, "gate": {"tau": 0.1, "tstr_epochs": 5}},
        )
    set_params(dest, **params)
    run(["git", "init", "-q"], dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], dest)
    return dest
