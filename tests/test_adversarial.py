import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from fit_util import RANDAUGMENT, patterns, write_split

from pipeline import __main__ as cli
from pipeline.augment import mixing
from pipeline.core import dataset, params
from pipeline.core.errors import PipelineError
from pipeline.learn import checkpoints, fit
from pipeline.stages import assemble

TINY_TRAIN = {"epochs": 4, "batch_size": 32, "width": 8, "lr": 0.01, "threads": 1}


def _run_stage(tmp_path, **adversarial):
    split, _, classes = write_split(tmp_path)
    cfg = {
        "train": TINY_TRAIN,
        "adversarial": {"source_epochs": 4, "fraction": 0.5, "eps": 0.4, "steps": 3, **adversarial},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    rc = cli.main(
        [
            "adversarial",
            "--quiet",
            "--params",
            str(tmp_path / "params.yaml"),
            "--clean",
            str(split),
            "--out",
            str(out / "adv"),
            "--metrics",
            str(out / "adv.json"),
            "--plots",
            str(out / "plots"),
        ]
    )
    assert rc == 0
    df, adv_classes = dataset.read_manifest(out / "adv")
    return split, df, json.loads((out / "adv.json").read_text()), out


def test_stage_writes_children_of_train_samples_with_lineage(tmp_path):
    split, df, metrics, out = _run_stage(tmp_path)
    split_df, _ = dataset.read_manifest(split)
    parents = split_df.set_index("sample_id").loc[df["parent_id"]]
    assert len(df) == metrics["kept"] == metrics["attacked"] > 0
    assert (parents["split"] == "train").all() and (df["split"] == "train").all()
    assert (df["origin"] == "adversarial").all() and (df["attack"] == "pgd").all()
    assert (df["label"].to_numpy() == parents["label"].to_numpy()).all()
    assemble.check_lineage(split_df, df, "adversarial")  # admitted by assemble
    # within the eps ball (uint8 rounding adds at most half a grey level)
    delta = dataset.load_pixels(df).astype(int) - dataset.load_pixels(parents.reset_index()).astype(int)
    assert np.abs(delta).max() <= round(0.4 * 255) + 1 and np.abs(delta).max() > 0
    assert 0 < metrics["flip_rate"] <= 1
    assert (out / "plots" / "examples.png").exists()


def test_stage_is_deterministic(tmp_path):
    _, a, _, out_a = _run_stage(tmp_path / "a")
    _, b, _, out_b = _run_stage(tmp_path / "b")
    assert a.drop(columns="store").equals(b.drop(columns="store"))
    assert (out_a / "adv" / "manifest.parquet").read_bytes() == (out_b / "adv" / "manifest.parquet").read_bytes()


def test_keep_successful_keeps_only_flipped(tmp_path):
    _, df, metrics, _ = _run_stage(tmp_path, keep="successful")
    assert df["flipped"].all() and metrics["kept"] == len(df) < metrics["attacked"] + 1


def test_disabled_stage_writes_an_empty_valid_manifest(tmp_path):
    _, df, metrics, _ = _run_stage(tmp_path, enabled=False)
    assert len(df) == 0 and metrics["attacked"] == 0 and "parent_id" in df


def test_source_model_from_a_file(tmp_path):
    split, assembled, classes = write_split(tmp_path / "data")
    x, y = patterns(120)
    result = fit.fit(fit.Inputs(x, y, x[:0], y[:0], 4), params.Train(**TINY_TRAIN), 0)
    checkpoints.save_model(tmp_path / "m.pt", result.model, result.config, classes)
    _, df, metrics, _ = _run_stage(tmp_path / "run", source_model=str(tmp_path / "m.pt"))
    assert len(df) > 0 and metrics["source_model"] == df["source_model"].iloc[0]


def test_adversarial_training_options():
    x, y = patterns(160)
    base = params.Train(**TINY_TRAIN)
    plain = fit.fit(fit.Inputs(x, y, x[:0], y[:0], 4), base, 0).model
    zero = fit.fit(
        fit.Inputs(x, y, x[:0], y[:0], 4),
        base.model_copy(update={"adversarial": params.TrainAdversarial(attack="pgd", ratio=0.0)}),
        0,
    ).model
    fast = base.model_copy(
        update={"adversarial": params.TrainAdversarial(attack="pgd", eps=0.1, steps=1, step_size=0.125)}
    )
    adv_a = fit.fit(fit.Inputs(x, y, x[:0], y[:0], 4), fast, 0).model
    adv_b = fit.fit(fit.Inputs(x, y, x[:0], y[:0], 4), fast, 0).model

    def same(m1, m2):
        return all(
            torch.equal(a, b)
            for a, b in zip(
                m1.state_dict().values(),  # noqa: E731
                m2.state_dict().values(),
            )
        )

    assert same(plain, zero)  # ratio 0 is off
    assert same(adv_a, adv_b) and not same(plain, adv_a)  # deterministic, and it does something


def test_mixing_options_change_training_deterministically():
    x, y = patterns(160)
    base = params.Train(**TINY_TRAIN)
    mixed = base.model_copy(update={"mixup_alpha": 0.4, "cutmix_alpha": 1.0})

    def mix():
        return mixing.make_batch_transform(mixed, seed=0)  # the stage builds it; fit imports no stage

    a = fit.fit(fit.Inputs(x, y, x[:0], y[:0], 4, mix=mix()), mixed, 0).model.state_dict()
    b = fit.fit(fit.Inputs(x, y, x[:0], y[:0], 4, mix=mix()), mixed, 0).model.state_dict()
    plain = fit.fit(fit.Inputs(x, y, x[:0], y[:0], 4), base, 0).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], plain[k]) for k in a)
    with pytest.raises(PipelineError, match="no batch transform"):  # never silently unmixed
        fit.fit(fit.Inputs(x, y, x[:0], y[:0], 4), mixed, 0)


def test_evaluate_reports_robustness(tmp_path):
    split, assembled, classes = write_split(tmp_path)
    cfg = {"train": TINY_TRAIN, "evaluate": {"robustness": {"eps": [0.05, 0.5], "steps": 5}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg))
    p = ["--quiet", "--params", str(tmp_path / "params.yaml")]
    assert (
        cli.main(
            [
                "train",
                *p,
                "--assemble",
                str(assembled),
                "--oof",
                str(tmp_path / "no-oof"),  # read only for train.soft_labels
                "--policy",
                RANDAUGMENT,
                "--unlabeled-policy",
                RANDAUGMENT,
                "--split",
                str(split),
                "--model",
                str(tmp_path / "m.pt"),
                "--metrics",
                str(tmp_path / "t.json"),
                "--plots",
                str(tmp_path / "tp"),
            ]
        )
        == 0
    )
    assert (
        cli.main(
            [
                "evaluate",
                *p,
                "--model",
                str(tmp_path / "m.pt"),
                "--split",
                str(split),
                "--metrics",
                str(tmp_path / "e.json"),
                "--plots",
                str(tmp_path / "ep"),
                "--ledger",
                str(tmp_path / "ledger.jsonl"),
            ]
        )
        == 0
    )
    m = json.loads((tmp_path / "e.json").read_text())
    r = m["robustness"]
    assert set(r) == {"fgsm_eps0.05", "fgsm_eps0.5", "pgd_eps0.05", "pgd_eps0.5", "n"}
    assert r["pgd_eps0.5"] <= r["pgd_eps0.05"] <= 1 and r["pgd_eps0.5"] < m["accuracy"]
    curve = pd.read_csv(tmp_path / "ep" / "robustness.csv")
    assert list(curve.columns) == ["eps", "fgsm", "pgd"] and list(curve["eps"]) == [0.0, 0.05, 0.5]
    assert curve["pgd"].iloc[0] == m["accuracy"]  # eps 0 is clean accuracy on the same samples
