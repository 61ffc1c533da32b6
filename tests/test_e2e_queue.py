"""End to end through DVC's experiment queue, as the README runs it: a RandAugment (N, M) grid, then
an ablation. Both queue experiments on one committed baseline (a module fixture: one `dvc repro`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from e2e_util import make_project, run

pytestmark = pytest.mark.slow  # `make test-all`: runs dvc repro / a real server

GRID = [(1, 3), (3, 6)]
# a queue's worth of experiments on digits in minutes: one-epoch models, the slow generators off
QUICK = {
    "train": {"epochs": 1},
    "oof": {"epochs": 1},
    "adversarial": {"enabled": False},
    "synthesize": {"enabled": False},
    "policy_search": {"candidates": 8, "max_samples": 64},
}  # (augment.num_ops, augment.magnitude); the policy file's own is (2, 9)


def _experiments(project: Path) -> list[dict]:
    """(name, params.yaml's data, {metrics file: data}) of every experiment `dvc exp show` lists."""
    out = []
    for row in json.loads(run(["dvc", "exp", "show", "--json"], project, stderr=False)):
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


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The tiny project, reproduced and committed: queued runs reuse its cached stages."""
    recipe = {"mine": {"with": {"mine.enabled": True}, "without": {"mine.enabled": False}}}
    project = make_project(
        tmp_path_factory.mktemp("queue") / "project",
        **QUICK,
        evaluate={"robustness": {"attacks": ["fgsm"], "eps": [0.1], "max_samples": 100}},
        ablate={"seeds": 2, "recipe": recipe, "budget": {"train.epochs": 2}},
    )
    run(["dvc", "repro"], project)
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"], project)
    return project


def test_randaugment_grid_through_the_experiment_queue(project: Path):
    for n, m in GRID:
        run(["dvc", "exp", "run", "--queue", "-S", f"augment.num_ops={n}", "-S", f"augment.magnitude={m}"], project)
    run(["dvc", "exp", "run", "--run-all", "-j", "1"], project)

    exps = [e for e in _experiments(project) if not e["name"].startswith("abl-")]
    assert sorted((e["params"]["augment"]["num_ops"], e["params"]["augment"]["magnitude"]) for e in exps) == GRID
    parents = {e["metrics"]["metrics/augment.json"]["parents"] for e in exps}
    for e in exps:  # the metrics come from runs under those params
        n, m = e["params"]["augment"]["num_ops"], e["params"]["augment"]["magnitude"]
        augment = e["metrics"]["metrics/augment.json"]
        assert (augment["num_ops"], augment["magnitude"]) == (n, m)
        assert sum(augment["op_counts"].values()) == n * augment["parents"] and parents == {augment["parents"]}
        assert 0.0 <= e["metrics"]["metrics/train.json"]["val_accuracy"] <= 1.0
        assert 0.0 <= e["metrics"]["metrics/evaluate.json"]["accuracy"] <= 1.0
    table = run(
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


def test_ablate_queues_rows_by_seeds_runs_them_and_collects_the_table(project: Path):
    dry = run([sys.executable, "-m", "pipeline", "ablate", "--dry-run"], project, stderr=False).splitlines()
    assert len(dry) == 4 and all(line.startswith("dvc exp run --queue -n abl-") for line in dry)

    run([sys.executable, "-m", "pipeline", "ablate", "--run"], project)  # queue, run, collect
    # a second seed re-runs training only. The `none` row's mine (disabled) and assemble differ
    # from the committed dvc.lock, so its second seed takes them from DVC's run cache, which DVC
    # keeps only for stages without an uncached out that is not a metric or plot (plots/mine)
    log = run(["dvc", "queue", "logs", "abl-none-s1"], project)
    for stage in ("mine", "assemble"):
        assert f"Stage '{stage}' is cached" in log, (stage, log[-2000:])
    assert "Running stage 'train'" in log
    exps = {e["name"]: e for e in _experiments(project) if e["name"].startswith("abl-")}
    assert sorted(exps) == ["abl-all-s0", "abl-all-s1", "abl-none-s0", "abl-none-s1"]
    for name, e in exps.items():  # each ran under its row's params and its seed
        assert e["params"]["mine"]["enabled"] == name.startswith("abl-all")
        assert e["params"]["train"]["epochs"] == 2 and e["params"]["train"]["seed"] == int(name[-1])
        assert e["metrics"]["metrics/train.json"]["seed"] == int(name[-1])
        assert e["metrics"]["metrics/mine.json"]["enabled"] == name.startswith("abl-all")
    table = json.loads((project / "metrics/ablation.json").read_text())
    rows = {r["row"]: r for r in table["rows"]}
    assert list(rows) == ["all", "none"] and table["failed"] == []
    for row in rows.values():
        accs = [exps[f"abl-{row['row']}-s{s}"]["metrics"]["metrics/evaluate.json"]["accuracy"] for s in (0, 1)]
        assert row["n"] == 2 and row["accuracy"]["mean"] == pytest.approx(sum(accs) / 2, abs=1e-6)
    assert rows["none"]["delta_accuracy"] == pytest.approx(
        rows["none"]["accuracy"]["mean"] - rows["all"]["accuracy"]["mean"], abs=1e-6
    )
    run(["dvc", "repro"], project)  # the collected table changed: the report is drawn again
    html = (project / "report/index.html").read_text()
    assert "what each stage bought" in html and "<td>none</td>" in html
