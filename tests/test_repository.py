"""What this repository commits: code, params, the pipeline and docs, never a run's outputs
(README, Reproducibility: they differ across CPUs, so a fresh clone's first run would rewrite
them and leave a dirty tree)."""

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_OUTPUTS = ["dvc.lock", "metrics", "plots", "models", "data/policy-search"]
ABLATION = "metrics/ablation.json"


def test_no_run_outputs_are_committed():
    proc = subprocess.run(["git", "ls-files", "--", *RUN_OUTPUTS], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"not a git checkout ({proc.stderr.strip()}): run the tests in a clone of the repository")
    # the one file under metrics/: the ablation's table, shipped empty (a dependency of the report
    # stage that `python -m pipeline ablate --collect` fills), so it has no CPU-dependent figure
    assert proc.stdout.split() in ([], [ABLATION]), "run outputs are tracked by git; `git rm --cached` them"
    assert json.loads((ROOT / ABLATION).read_text())["rows"] == []
    assert (ROOT / "labels/patches.csv").read_text().startswith("sample_id,old_label,label,")
