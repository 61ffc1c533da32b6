"""End to end on the folders users bring (tests/corpus.py): `dvc repro` runs every stage on each,
keeping colour where the images have it; a single class is refused at ingest in one line, before
any training. Two folders run on the shipped params as they are; the others, and the CSV source,
on them with shorter training (`SHORT`: the same code paths, fewer epochs; on small data the
defaults train up to 200 epochs, minutes a folder on 2 cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import corpus
import pandas as pd
import pytest
from e2e_util import STAGES, make_project, ran, run

pytestmark = pytest.mark.slow  # `make test-all`: runs dvc repro / a real server

RUNNABLE = [n for n in corpus.FOLDERS if n != "single_class"]
DEFAULTS = ("shapes_jpeg_2x25", "tiny_2x12")  # large JPEGs of two sizes; 12 images a class
SHORT = {
    "train": {"min_steps": 100, "max_epochs": 20},
    "oof": {"min_steps": 100, "max_epochs": 15},
    "policy_search": {"candidates": 16},
    "adversarial": {"source_epochs": 3},
}


def _project(tmp_path: Path, name: str, **params: dict) -> Path:
    images = corpus.make(name, tmp_path / "images")
    ingest = {"source": "imagefolder", "path": str(images)}
    return make_project(tmp_path / "project", tiny=False, ingest=ingest, **params)


@pytest.mark.parametrize("name", RUNNABLE)
def test_folder_runs_end_to_end(tmp_path, name):
    spec = corpus.FOLDERS[name]
    project = _project(tmp_path, name, **({} if name in DEFAULTS else SHORT))
    assert ran(run(["dvc", "repro"], project)) == STAGES
    metrics = {p.stem: json.loads(p.read_text()) for p in (project / "metrics").glob("*.json")}
    ingest, split = metrics["ingest"], metrics["split"]
    assert ingest["in"] == ingest["kept"] == sum(spec.counts) and ingest["quarantined"] == 0
    assert ingest["channels"] == (3 if spec.colour else 1)
    assert ingest["image_size"] == min(64, int(pd.Series([min(s) for s in spec.sizes]).median()) // 4 * 4)
    assert split["in"] == split["kept"] + split["removed"]
    assert sum(v for k, v in split.items() if k.startswith("cross_split_")) == 0
    clean = pd.read_parquet(project / "data/clean/manifest.parquet")
    assert len(clean) == sum(spec.counts)
    # nothing here is a duplicate: a detector that flags them has lost its calibration
    assert metrics["clean"]["issues"]["near_duplicate"]["total"] == 0
    lo, hi = metrics["evaluate"]["accuracy_ci95"]
    assert 0 <= lo <= metrics["evaluate"]["accuracy"] <= hi <= 1
    summary = subprocess.run(
        [sys.executable, "-m", "pipeline", "summary"],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, "PIPELINE_QUIET": "1"},
    )
    assert summary.returncode == 0 and 6 <= len(summary.stdout.splitlines()) <= 12
    assert all(len(line) < 400 for line in summary.stdout.splitlines())


def test_a_csv_with_groups_and_missing_files(tmp_path):
    table = corpus.make_csv(tmp_path / "images")
    project = make_project(tmp_path / "project", tiny=False, ingest={"source": "csv", "path": str(table)}, **SHORT)
    assert ran(run(["dvc", "repro"], project)) == STAGES
    ingest = json.loads((project / "metrics/ingest.json").read_text())
    assert (ingest["in"], ingest["kept"], ingest["by_reason"]) == (94, 90, {"missing_file": 4})
    assert ingest["channels"] == 3
    split = pd.read_parquet(project / "data/split/manifest.parquet")
    assert (split.groupby("group")["split"].nunique() == 1).all()  # a session never crosses splits
    clean = json.loads((project / "metrics/clean.json").read_text())
    assert clean["issues"]["near_duplicate"]["total"] == 0  # shots of one session are not copies


def test_single_class_is_refused_at_ingest_in_one_line(tmp_path):
    project = _project(tmp_path, "single_class")
    proc = subprocess.run(
        ["dvc", "repro"],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
    )
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("pipeline ingest: error:")]
    assert len(errors) == 1 and "1 class with usable images (red_circle (30 images))" in errors[0]
    assert "Traceback" not in proc.stderr and not (project / "data/split").exists()


def test_an_unlabeled_folder_becomes_a_pool_that_pseudo_labels_and_never_leaks(tmp_path):
    from pipeline.core import schema
    from pipeline.sources import readers as sources

    labeled, pool, truth, copied = corpus.make_digits_pool(tmp_path / "images")
    project = make_project(
        tmp_path / "project",
        ingest={"source": "imagefolder", "path": str(labeled), "unlabeled_path": str(pool)},
        oof={"epochs": 2, "min_steps": 300},
        pseudo={"rounds": 2, "student_epochs": 2},
        # 2 epochs of train: RandAugment per batch (auto, on this small set) needs more (0.33 measured)
        augment={"mode": "offline"},
    )
    assert ran(run(["dvc", "repro"], project)) == STAGES
    metrics = {p.stem: json.loads(p.read_text()) for p in (project / "metrics").glob("*.json")}
    assert (metrics["ingest"]["kept"], metrics["ingest"]["unlabeled"]) == (900 + 630, 630)
    split = pd.read_parquet(project / "data/split/manifest.parquet").set_index("path")
    pool_rows = split[split.index.str.startswith(sources.UNLABELED)]
    assert (
        set(pool_rows["split"]) <= {schema.POOL, "removed"}
        and not split.loc[~split.index.isin(pool_rows.index), "split"].eq(schema.POOL).any()
    )
    # a copy of a val / test image is removed under its rule; a copy of a train image stays in the pool
    held = {c for c, orig in copied.items() if split.loc[orig, "split"] in ("val", "test")}
    assert 0 < len(held) < len(copied)
    removed = pool_rows[pool_rows["split"] == "removed"]
    assert held <= {p.removeprefix(sources.UNLABELED) for p in removed.index}  # (and any natural near copy)
    rules = {f"pool_{kind}_duplicate_of_{s}" for kind in ("exact", "near") for s in ("val", "test")}
    assert set(removed["removed_reason"]) <= rules and set(
        removed.loc[[sources.UNLABELED + c for c in held], "removed_reason"]
    ) <= {"pool_exact_duplicate_of_val", "pool_exact_duplicate_of_test"}
    assert metrics["split"]["unlabeled"] == 630 - len(removed)
    # pseudo-labels: only pool samples, none a copy of a held-out image, mostly right
    pseudo = pd.read_parquet(project / "data/pseudo/manifest.parquet")
    assert metrics["pseudo"]["pool"] == metrics["split"]["unlabeled"] and len(pseudo) == metrics["pseudo"]["kept"] > 0
    parents = split.reset_index().set_index("sample_id").loc[pseudo["parent_id"]]
    assert (parents["split"] == schema.POOL).all() and (pseudo["origin"] == schema.PSEUDO).all()
    right = [truth[p.removeprefix(sources.UNLABELED)] == label for p, label in zip(pseudo["path"], pseudo["label"])]
    assert sum(right) / len(right) >= 0.8
    assert metrics["assemble"]["by_origin"]["pseudo"] == len(pseudo)
    assert metrics["evaluate"]["accuracy"] > 0.5
    from pipeline.commands import summary

    lines = summary.lines(project / "metrics", project / "plots")
    assert any(ln.startswith(f"pseudo    {len(pseudo)} of {metrics['pseudo']['pool']} unlabeled") for ln in lines)
    assert any(ln.startswith("split ") and f"unlabeled {metrics['split']['unlabeled']}" in ln for ln in lines)
