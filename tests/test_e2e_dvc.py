"""End to end: the project, copied into a fresh git repository, run by `dvc repro`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from e2e_util import STAGES, make_project, ran, run, set_params

from pipeline.core import catalog

pytestmark = pytest.mark.slow  # `make test-all`: runs dvc repro / a real server


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("e2e") / "project")


def test_repro_runs_all_then_nothing_then_only_downstream(project: Path):
    first = run(["dvc", "repro"], project)
    assert ran(first) == STAGES
    metrics = json.loads((project / "metrics/evaluate.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0
    ingest = json.loads((project / "metrics/ingest.json").read_text())
    assert ingest["in"] == ingest["kept"] + ingest["quarantined"] == 1797
    assert (project / "dvc.lock").exists()
    assembled = json.loads((project / "metrics/assemble.json").read_text())
    assert set(assembled["by_origin"]) == {"real"}  # assemble.use: the derived stages run, train does not use them
    assert set(assembled["not_used"]) == {"augmented", "adversarial", "synthetic"}
    assert json.loads((project / "metrics/synthesize.json").read_text())["verdict"] == "admitted"
    assert (project / "plots/synthesize/samples.png").exists()
    clean = pd.read_parquet(project / "data/clean/manifest.parquet")
    assert {"sample_id", "path", "label", "split", "is_label_issue", "label_score", "suggested_label"} <= set(clean)
    assert len(clean) == 1797 and (project / "plots/clean/label_issues.png").exists()
    assert (project / "plots/mine/hardest.png").exists()
    model_bytes = (project / "models/model.pt").read_bytes()

    assert ran(run(["dvc", "repro"], project)) == []
    with open(project / "augment_policies/strong.yaml", "a") as f:  # a policy no stage uses
        f.write("# edited\n")
    assert ran(run(["dvc", "repro"], project)) == []

    set_params(project, train={"epochs": 3})
    assert ran(run(["dvc", "repro"], project)) == ["train", "evaluate", "report"]

    # a split param is split's alone: only split is out of date (a repro would re-run all but ingest)
    set_params(project, split={"fractions": {"train": 0.6, "val": 0.2, "test": 0.2}})
    assert list(json.loads(run(["dvc", "status", "--json"], project, stderr=False))) == ["split"]
    set_params(project, split={"fractions": {"train": 0.7, "val": 0.1, "test": 0.2}})

    set_params(project, clean={"action": "remove"})  # oof is reused; clean and what reads it re-run
    assert ran(run(["dvc", "repro"], project)) == [
        "clean",
        "pseudo",
        "mine",
        "augment",
        "adversarial",
        "synthesize",
        "assemble",
        "train",
        "evaluate",
        "report",
    ]
    set_params(project, clean={"action": "flag"})

    # Back to the first params: same inputs give byte-identical outputs.
    set_params(project, train={"epochs": 2})
    run(["dvc", "repro"], project)  # may restore outputs from DVC's run cache ...
    run(["dvc", "repro", "--force", "--single-item", "train"], project)  # ... so train anew
    assert (project / "models/model.pt").read_bytes() == model_bytes


def test_every_metric_key_read_across_modules_is_written(project: Path):
    from pipeline.core import metric_keys

    run(["dvc", "repro"], project)
    missing = {
        stem: [k for k in keys if k not in written and k not in metric_keys.OPTIONAL.get(stem, ())]
        for stem, keys in metric_keys.READ.items()
        if (written := json.loads((project / f"metrics/{stem}.json").read_text()))
    }
    assert {stem: keys for stem, keys in missing.items() if keys} == {}
    health = json.loads((project / "metrics/data_health.json").read_text())
    assert set(health) == set(metric_keys.DATA_HEALTH)


def test_summary_and_the_exp_show_recipe_are_short(project: Path):
    from pipeline.commands import summary

    run(["dvc", "repro"], project)  # nothing to do after the test above
    lines = run([sys.executable, "-m", "pipeline", "summary"], project).splitlines()
    assert 8 <= len(lines) <= 12 and max(map(len, lines)) < 400
    assert lines[0].startswith("data      1797 images in: 1797 kept, 0 quarantined")
    assert any(ln.startswith("test      accuracy ") and "95% interval" in ln for ln in lines)
    took = json.loads((project / ".pipeline/stage_times.json").read_text())  # each stage's last wall time
    assert set(took) <= set(catalog.STAGES) and {"ingest", "oof", "train"} <= set(took)
    assert lines[-1].startswith(f"time      {sum(took.values()):.0f} s in {len(took)} stages")
    table = run(["dvc", "exp", "show", "--csv", "--drop", ".*", "--keep", summary.KEEP], project)
    header = table.splitlines()[0].split(",")
    assert set(header) == {
        "Experiment",
        "Created",
        "accuracy",
        "macro_f1",
        "ece",
        "val_accuracy",
        "metrics/oof.json:oof_accuracy",
        "metrics/data_health.json:estimated_noise_rate",
        "metrics/data_health.json:quarantined",
        "train.epochs",
        "train.mixup_alpha",
        "augment.policy",
        "clean.action",
    }
    assert len(run(["dvc", "exp", "show", "--csv"], project).splitlines()[0].split(",")) > 100  # without it


def test_report_is_complete_offline_and_renders_in_chromium(project: Path):
    from report_util import check_report, render_in_chromium

    run(["dvc", "repro"], project)
    html = (project / "report/index.html").read_text()
    check_report(html, STAGES)
    page = render_in_chromium(project / "report/index.html", project / "shot.png", "#stage-evaluate")
    assert page["errors"] == [] and page["height"] > 3000
    health = json.loads((project / "metrics/data_health.json").read_text())
    ingest = json.loads((project / "metrics/ingest.json").read_text())
    by_origin = json.loads((project / "metrics/assemble.json").read_text())["by_origin"]
    assert health["quarantined"] == ingest["quarantined"] and health["samples_in"] == 1797
    assert health["samples_by_origin"] == by_origin and health["training_set"] == sum(by_origin.values())
    assert health["cross_split_leaks"] == 0 and 0 <= health["label_issue_rate"] <= 1
    diff = run(["dvc", "metrics", "diff", "--all", "--json"], project)
    assert "metrics/data_health.json" in json.JSONDecoder().raw_decode(diff)[0]  # stderr may follow

    # dvc plots show, offline: Vega inlined by the template, every chart drawn, the galleries beside
    run([sys.executable, "-m", "pipeline", "plots-offline"], project)
    run(["dvc", "plots", "show", "--html-template", ".dvc/plots/offline.html", "-o", "dvc_plots"], project)
    shown = render_in_chromium(project / "dvc_plots/index.html", project / "plots.png", count="svg.marks")
    assert shown["errors"] == [] and shown["drawn"] == 4  # curves, confusion, calibration, robustness
    assert len(list((project / "dvc_plots/static").glob("*.png"))) >= 8


def test_stage_failure_is_one_line_and_nonzero(project: Path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    bad = project / "bad.yaml"
    bad.write_text("ingest: {source: imagefolder, path: /nonexistent/folder}\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "ingest",
            "--params",
            str(bad),
            "--out",
            str(project / "x"),
            "--metrics",
            str(project / "x.json"),
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "pipeline ingest: error: ingest.path: /nonexistent/folder: no such file or directory"
    ]


def test_a_fresh_clone_pulls_every_output_and_the_experiments_from_the_remotes(project: Path, tmp_path: Path):
    """push -> fresh clone -> pull -> nothing to reproduce, with a local directory as the DVC remote
    and a bare git repository as the git remote (what S3 / GCS / SSH remotes do, minus the network)."""
    commit = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm"]
    run(["dvc", "repro"], project)
    run(["dvc", "remote", "add", "--default", "--force", "storage", str(tmp_path / "dvc-remote")], project)
    run(["git", "add", "-A"], project)
    run([*commit, "a run, its outputs in the DVC remote"], project)
    run(["dvc", "push"], project)
    run(["git", "init", "--bare", "-q", str(tmp_path / "origin.git")], tmp_path)
    run(["git", "remote", "add", "origin", str(tmp_path / "origin.git")], project)
    run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], project)
    run(["dvc", "exp", "run", "--temp", "-n", "shared-exp", "-S", "train.seed=1"], project)
    run(["dvc", "exp", "push", "origin", "shared-exp"], project)  # its git ref and its data

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", "-b", "main", str(tmp_path / "origin.git"), str(clone)], tmp_path)
    run(["dvc", "pull"], clone)
    assert "Data and pipelines are up to date" in run(["dvc", "status"], clone)
    assert ran(run(["dvc", "repro", "--dry"], clone)) == []
    for out in ("models/model.pt", "report/index.html", "data/split/manifest.parquet"):
        assert (clone / out).read_bytes() == (project / out).read_bytes(), out
    run(["dvc", "exp", "pull", "origin", "shared-exp"], clone)
    assert "shared-exp" in run(["dvc", "exp", "list", "--name-only"], clone)
    run(["dvc", "exp", "apply", "shared-exp"], clone)  # its outputs come from the DVC remote
    assert json.loads((clone / "metrics/train.json").read_text())["seed"] == 1
    assert "Data and pipelines are up to date" in run(["dvc", "status"], clone)
