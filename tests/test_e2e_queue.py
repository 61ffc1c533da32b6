"""End to end: a RandAugment (N, M) grid through DVC's experiment queue, as the README runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_e2e_dvc import _run, make_project

GRID = [(1, 3), (3, 6)]  # (augment.num_ops, augment.magnitude); the policy file's own is (2, 9)


def _stdout(cmd: list[str], cwd: Path) -> str:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
    }
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _experiments(project: Path) -> list[dict]:
    """(name, params.yaml's data, {metrics file: data}) of every experiment `dvc exp show` lists."""
    out = []
    for row in json.loads(_stdout(["dvc", "exp", "show", "--json"], project)):
        for exp in row.get("experiments") or []:
            data = exp["revs"][0]["data"]
            out.append(
                {
                    "name": exp["name"],
                    "params": data["params"]["params.yaml"]["data"],
                    "metrics": {path: m.get("data", {}) for path, m in data["metrics"].items()},
                }
            )
    return out


@pytest.mark.slow
def test_randaugment_grid_through_the_experiment_queue(tmp_path: Path):
    project = make_project(
        tmp_path / "project",
        train={"epochs": 1},
        oof={"epochs": 1},
        adversarial={"enabled": False},
        synthesize={"enabled": False},
        evaluate={"robustness": {"attacks": []}},
        policy_search={"candidates": 8, "max_samples": 64},
    )
    _run(["dvc", "repro"], project)  # the baseline: queued runs reuse its cached stages
    _run(["git", "add", "-A"], project)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"], project)

    for n, m in GRID:
        _run(["dvc", "exp", "run", "--queue", "-S", f"augment.num_ops={n}", "-S", f"augment.magnitude={m}"], project)
    _run(["dvc", "exp", "run", "--run-all", "-j", "1"], project)

    exps = _experiments(project)
    assert sorted((e["params"]["augment"]["num_ops"], e["params"]["augment"]["magnitude"]) for e in exps) == GRID
    parents = {e["metrics"]["metrics/augment.json"]["parents"] for e in exps}
    for e in exps:  # the metrics come from runs under those params
        n, m = e["params"]["augment"]["num_ops"], e["params"]["augment"]["magnitude"]
        augment = e["metrics"]["metrics/augment.json"]
        assert (augment["num_ops"], augment["magnitude"]) == (n, m)
        assert sum(augment["op_counts"].values()) == n * augment["parents"] and parents == {augment["parents"]}
        assert 0.0 <= e["metrics"]["metrics/train.json"]["val_accuracy"] <= 1.0
        assert 0.0 <= e["metrics"]["metrics/evaluate.json"]["accuracy"] <= 1.0
    table = _stdout(
        [
            "dvc",
            "exp",
            "show",
            "--csv",
            "--only-changed",
            "--sort-by",  # the README's command
            "metrics/train.json:val_accuracy",
            "--sort-order",
            "desc",
        ],
        project,
    )
    assert all(e["name"] in table for e in exps) and "augment.num_ops" in table
