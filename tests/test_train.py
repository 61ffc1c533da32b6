import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from fit_util import RANDAUGMENT, digits_split, patterns, write_split

from pipeline import __main__ as cli
from pipeline.core import params
from pipeline.core.errors import PipelineError
from pipeline.learn import checkpoints, fit


def _train(tmp_path, out, split, assemble, augment=None, **train) -> int:
    params_file = tmp_path / "params.yaml"
    recipe = {"epochs": 3, "batch_size": 32, "width": 8, "lr": 0.01, "threads": 1, "min_steps": 0}
    params_file.write_text(yaml.safe_dump({"train": recipe | train, "augment": augment or {}}))
    flags = {"--assemble": assemble, "--policy": RANDAUGMENT, "--unlabeled-policy": RANDAUGMENT, "--split": split}
    flags |= {"--model": out / "model.pt"}
    flags |= {"--oof": tmp_path / "no-oof"}  # read only for train.soft_labels
    flags |= {"--metrics": out / "train.json", "--plots": out / "plots"}
    return cli.main(["train", "--params", str(params_file), "--quiet", *map(str, sum(flags.items(), ()))])


def test_train_stage_writes_model_metrics_and_curves(tmp_path):
    split, assemble, classes = write_split(tmp_path)
    out = tmp_path / "out"
    rc = _train(tmp_path, out, split, assemble)
    assert rc == 0
    m = json.loads((out / "train.json").read_text())
    assert set(m) == {
        "best_epoch",
        "epochs_run",
        "epochs_planned",
        "patience",
        "val_accuracy",
        "val_loss",
        "n_train",
        "n_schedule",
        "n_val",
        "parameters",
        "threads",
        "seed",
        "world_size",
    }
    assert m["n_train"] == m["n_schedule"] == 144 and m["n_val"] == 48 and m["epochs_run"] == 3
    curves = pd.read_csv(out / "plots" / "curves.csv")
    assert list(curves.columns) == ["epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy"]
    assert list(curves["epoch"]) == [1, 2, 3]
    model, config, model_classes = checkpoints.load_model(out / "model.pt")
    assert model_classes == classes and config["train"]["epochs"] == 3


def test_train_seed_moves_training_only(tmp_path):
    split, assemble, _ = write_split(tmp_path)
    assert _train(tmp_path, tmp_path / "s0", split, assemble, epochs=1) == 0
    assert _train(tmp_path, tmp_path / "s1", split, assemble, epochs=1, seed=1) == 0
    assert json.loads((tmp_path / "s1" / "train.json").read_text())["seed"] == 1  # base.seed 0 + train.seed 1
    assert (tmp_path / "s0" / "model.pt").read_bytes() != (tmp_path / "s1" / "model.pt").read_bytes()
    dvc = yaml.safe_load((Path(__file__).parents[1] / "dvc.yaml").read_text())
    readers = [n for n, st in dvc["stages"].items() if any(p in ("train", "train.seed") for p in st.get("params", []))]
    assert readers == ["train"]  # no data stage re-runs for another train seed


@pytest.mark.slow  # starts two DDP worker processes
def test_ddp_two_processes_train_digits_reproducibly(tmp_path):
    split, assemble, _ = digits_split(tmp_path)
    recipe = {"epochs": 3, "batch_size": 64, "threads": 1, "augment": {"mode": "offline"}}  # 3 epochs: no noise
    assert _train(tmp_path, tmp_path / "one", split, assemble, **recipe) == 0
    for run in ("a", "b"):
        assert _train(tmp_path, tmp_path / run, split, assemble, **recipe, nproc=2) == 0
    one, ddp = (json.loads((tmp_path / r / "train.json").read_text()) for r in ("one", "a"))
    assert one["world_size"] == 1 and ddp["world_size"] == 2
    assert ddp["val_accuracy"] > 0.85 and abs(ddp["val_accuracy"] - one["val_accuracy"]) < 0.05  # the same batches
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()
    curves = pd.read_csv(tmp_path / "a" / "plots" / "curves.csv")
    assert len(curves) == 3 and curves["train_loss"].is_monotonic_decreasing


def test_ddp_refuses_a_batch_it_cannot_share_evenly(tmp_path, capsys):
    split, assemble, _ = write_split(tmp_path)
    assert _train(tmp_path, tmp_path / "o", split, assemble, batch_size=33, nproc=2) == 2
    assert "multiple of train.nproc 2" in capsys.readouterr().err


def test_train_stage_refuses_mismatched_class_lists(tmp_path, capsys):
    split, _, _ = write_split(tmp_path / "a")
    _, other, _ = write_split(tmp_path / "b", k=3)
    (tmp_path / "params.yaml").write_text("{}\n")
    flags = {"--assemble": other, "--split": split, "--policy": RANDAUGMENT, "--unlabeled-policy": RANDAUGMENT}
    flags |= {"--model": tmp_path / "m.pt"}
    flags |= {"--oof": tmp_path / "no-oof"}
    flags |= {"--metrics": tmp_path / "m.json", "--plots": tmp_path / "plots"}
    rc = cli.main(["train", "--quiet", "--params", str(tmp_path / "params.yaml"), *map(str, sum(flags.items(), ()))])
    assert rc == 2 and "class list differs" in capsys.readouterr().err


def test_small_data_trains_for_more_epochs_to_reach_min_steps():
    cfg = params.Train(epochs=30, patience=5, batch_size=128, min_steps=1000, max_epochs=200)
    assert fit.schedule(cfg, 60_000).epochs == 30  # 468 steps an epoch: plenty
    small = fit.schedule(cfg, 3_200)  # 25 steps an epoch
    assert small.epochs == 40 and small.patience == 7
    assert fit.schedule(cfg, 100).epochs == 200  # one step an epoch: capped
    assert fit.schedule(cfg.model_copy(update={"min_steps": 0}), 100).epochs == 30


def test_soft_targets_mix_the_ensemble_in_by_own_or_parent_id():
    from pipeline.stages import train

    df = pd.DataFrame(
        {
            "sample_id": ["a", "b", "copy-of-a", "synthetic"],
            "parent_id": [None, None, "a", None],
            "label_id": [0, 1, 0, 2],
        }
    )
    probs = pd.Series({"a": [0.6, 0.4, 0.0], "b": [0.1, 0.8, 0.1]})
    t = train.manifest_soft_targets(df, probs, 3, share=0.5, smoothing=0.0)
    assert np.allclose(t.sum(1), 1.0)
    assert np.allclose(t[0], [0.8, 0.2, 0.0]) and np.allclose(t[2], t[0])  # the copy takes its parent's
    assert np.allclose(t[1], [0.05, 0.9, 0.05]) and np.allclose(t[3], [0, 0, 1])  # no probabilities: one-hot


def test_soft_targets_reach_training_and_are_checked():
    x, y = patterns(120, 8, 1, 4, 0)
    cfg = params.Train(epochs=1, batch_size=32, width=8, threads=1, min_steps=0)
    plain = fit.fit(fit.Inputs(x, y, x[:0], y[:0], 4), cfg, 0)
    soft = np.full((len(y), 4), 0.25, np.float32)
    mixed = fit.fit(fit.Inputs(x, y, x[:0], y[:0], 4, soft_targets=soft), cfg, 0)
    a, b = plain.model.state_dict(), mixed.model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(PipelineError, match="soft targets of shape"):
        fit.fit(fit.Inputs(x, y, x[:0], y[:0], 4, soft_targets=soft[:10]), cfg, 0)
