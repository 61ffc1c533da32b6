"""End to end with a backbone: `dvc repro` in a fresh git repository with a real timm model loading a
checkpoint file this test writes (random weights: no network), oof's linear probe and train
fine-tuning from the backbone; the report draws the backbone's space."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e_util import STAGES, make_project, ran, run, set_params

pytestmark = pytest.mark.slow  # `make test-all`: runs dvc repro


def test_repro_with_a_timm_backbone_probe_and_fine_tuning(tmp_path: Path):
    import timm
    import torch
    from safetensors.torch import save_file

    project = make_project(tmp_path / "project")
    torch.manual_seed(0)
    save_file(timm.create_model("resnet18", num_classes=1000).state_dict(), project / "resnet18.safetensors")
    backbone = {"name": "timm:resnet18", "weights": "resnet18.safetensors", "image_size": 16}
    set_params(project, backbone=backbone, oof={"model": "probe"}, train={"init": "backbone"})
    assert ran(run(["dvc", "repro"], project)) == STAGES
    embed = json.loads((project / "metrics/embed.json").read_text())
    assert embed["samples"] == 1797 and embed["dim"] == 512 and embed["image_size"] == 16
    assert embed["channels"] == 1 and embed["weights"] == "resnet18.safetensors"
    oof = json.loads((project / "metrics/oof.json").read_text())
    assert oof["model"] == "probe" and oof["n_oof"] > 1000
    from pipeline.learn import checkpoints

    _, config, _ = checkpoints.load_model(project / "models/model.pt")
    assert config["model"] == "timm:resnet18" and config["input_size"] == 16
    assert 0.0 <= json.loads((project / "metrics/evaluate.json").read_text())["accuracy"] <= 1.0
    page = (project / "report/index.html").read_text()
    assert "The backbone&#x27;s space" in page or "The backbone's space" in page
    assert ran(run(["dvc", "repro"], project)) == []
    set_params(project, backbone={"image_size": 24})  # the backbone's params: embed and what reads it
    assert ran(run(["dvc", "repro"], project))[:3] == ["embed", "split", "oof"]  # split: the suspects' neighbours
