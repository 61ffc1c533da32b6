"""End to end: the project, copied into a fresh git repository, run by `dvc repro`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = [
    "ingest",
    "split",
    "oof",
    "clean",
    "pseudo",
    "mine",
    "policy-search",
    "augment",
    "adversarial",
    "synthesize",
    "assemble",
    "train",
    "evaluate",
    "report",
]


def _run(cmd: list[str], cwd: Path, stderr: bool = True) -> str:
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


def _ran(output: str) -> list[str]:
    return [s for s in STAGES if re.search(rf"Running stage '{s}'", output)]


def _set_params(project: Path, **sections: dict) -> None:
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
        _set_params(
            dest,
            train={"epochs": 2, "min_steps": 0},
            adversarial={"source_epochs": 2},
            oof={"epochs": 2, "min_steps": 0},
            policy_search={"candidates": 16, "max_samples": 128},
            # 2-epoch judges are near uniform (max p ~0.13 of 10 classes): tau just above chance
            synthesize={"per_class": 10, "vae": {"epochs": 15}, "gate": {"tau": 0.1, "tstr_epochs": 5}},
        )
    _set_params(dest, **params)
    _run(["git", "init", "-q"], dest)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], dest)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], dest)
    return dest


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("e2e") / "project")


@pytest.mark.slow
def test_repro_runs_all_then_nothing_then_only_downstream(project: Path):
    first = _run(["dvc", "repro"], project)
    assert _ran(first) == STAGES
    metrics = json.loads((project / "metrics/evaluate.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0
    ingest = json.loads((project / "metrics/ingest.json").read_text())
    assert ingest["in"] == ingest["kept"] + ingest["quarantined"] == 1797
    assert (project / "dvc.lock").exists()
    by_origin = json.loads((project / "metrics/assemble.json").read_text())["by_origin"]
    assert set(by_origin) == {"real", "augmented", "adversarial", "synthetic"}
    assert json.loads((project / "metrics/synthesize.json").read_text())["verdict"] == "admitted"
    assert (project / "plots/synthesize/samples.png").exists()
    clean = pd.read_parquet(project / "data/clean/manifest.parquet")
    assert {"sample_id", "path", "label", "split", "is_label_issue", "label_score", "suggested_label"} <= set(clean)
    assert len(clean) == 1797 and (project / "plots/clean/label_issues.png").exists()
    assert (project / "plots/mine/hardest.png").exists()
    model_bytes = (project / "models/model.pt").read_bytes()

    assert _ran(_run(["dvc", "repro"], project)) == []
    with open(project / "augment_policies/strong.yaml", "a") as f:  # a policy no stage uses
        f.write("# edited\n")
    assert _ran(_run(["dvc", "repro"], project)) == []

    _set_params(project, train={"epochs": 3})
    assert _ran(_run(["dvc", "repro"], project)) == ["train", "evaluate", "report"]

    # a split param is split's alone: only split is out of date (a repro would re-run all but ingest)
    _set_params(project, split={"fractions": {"train": 0.6, "val": 0.2, "test": 0.2}})
    assert list(json.loads(_run(["dvc", "status", "--json"], project, stderr=False))) == ["split"]
    _set_params(project, split={"fractions": {"train": 0.7, "val": 0.1, "test": 0.2}})

    _set_params(project, clean={"action": "remove"})  # oof is reused; clean and what reads it re-run
    assert _ran(_run(["dvc", "repro"], project)) == [
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
    _set_params(project, clean={"action": "flag"})

    # Back to the first params: same inputs give byte-identical outputs.
    _set_params(project, train={"epochs": 2})
    _run(["dvc", "repro"], project)  # may restore outputs from DVC's run cache ...
    _run(["dvc", "repro", "--force", "--single-item", "train"], project)  # ... so train anew
    assert (project / "models/model.pt").read_bytes() == model_bytes


@pytest.mark.slow
def test_summary_and_the_exp_show_recipe_are_short(project: Path):
    from pipeline import summary

    _run(["dvc", "repro"], project)  # nothing to do after the test above
    lines = _run([sys.executable, "-m", "pipeline", "summary"], project).splitlines()
    assert 8 <= len(lines) <= 12 and max(map(len, lines)) < 400
    assert lines[0].startswith("data      1797 images in: 1797 kept, 0 quarantined")
    assert any(ln.startswith("test      accuracy ") and "95% interval" in ln for ln in lines)
    table = _run(["dvc", "exp", "show", "--csv", "--drop", ".*", "--keep", summary.KEEP], project)
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
    assert len(_run(["dvc", "exp", "show", "--csv"], project).splitlines()[0].split(",")) > 100  # without it


@pytest.mark.slow
def test_report_is_complete_offline_and_renders_in_chromium(project: Path):
    from report_util import check_report, render_in_chromium

    _run(["dvc", "repro"], project)
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
    diff = _run(["dvc", "metrics", "diff", "--all", "--json"], project)
    assert "metrics/data_health.json" in json.JSONDecoder().raw_decode(diff)[0]  # stderr may follow

    # dvc plots show, offline: Vega inlined by the template, every chart drawn, the galleries beside
    _run([sys.executable, "-m", "pipeline", "plots-offline"], project)
    _run(["dvc", "plots", "show", "--html-template", ".dvc/plots/offline.html", "-o", "dvc_plots"], project)
    shown = render_in_chromium(project / "dvc_plots/index.html", project / "plots.png", count="svg.marks")
    assert shown["errors"] == [] and shown["drawn"] == 4  # curves, confusion, calibration, robustness
    assert len(list((project / "dvc_plots/static").glob("*.png"))) >= 8


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_fresh_clone_pulls_every_output_and_the_experiments_from_the_remotes(project: Path, tmp_path: Path):
    """push -> fresh clone -> pull -> nothing to reproduce, with a local directory as the DVC remote
    and a bare git repository as the git remote (what S3 / GCS / SSH remotes do, minus the network)."""
    commit = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm"]
    _run(["dvc", "repro"], project)
    _run(["dvc", "remote", "add", "--default", "--force", "storage", str(tmp_path / "dvc-remote")], project)
    _run(["git", "add", "-A"], project)
    _run([*commit, "a run, its outputs in the DVC remote"], project)
    _run(["dvc", "push"], project)
    _run(["git", "init", "--bare", "-q", str(tmp_path / "origin.git")], tmp_path)
    _run(["git", "remote", "add", "origin", str(tmp_path / "origin.git")], project)
    _run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], project)
    _run(["dvc", "exp", "run", "--temp", "-n", "shared-exp", "-S", "train.seed=1"], project)
    _run(["dvc", "exp", "push", "origin", "shared-exp"], project)  # its git ref and its data

    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", "-b", "main", str(tmp_path / "origin.git"), str(clone)], tmp_path)
    _run(["dvc", "pull"], clone)
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], clone)
    assert _ran(_run(["dvc", "repro", "--dry"], clone)) == []
    for out in ("models/model.pt", "report/index.html", "data/split/manifest.parquet"):
        assert (clone / out).read_bytes() == (project / out).read_bytes(), out
    _run(["dvc", "exp", "pull", "origin", "shared-exp"], clone)
    assert "shared-exp" in _run(["dvc", "exp", "list", "--name-only"], clone)
    _run(["dvc", "exp", "apply", "shared-exp"], clone)  # its outputs come from the DVC remote
    assert json.loads((clone / "metrics/train.json").read_text())["seed"] == 1
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], clone)
