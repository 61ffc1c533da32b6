import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from fit_util import NOISE, TINY_TRAIN, patterns

from pipeline import __main__ as cli
from pipeline.augment import mixing
from pipeline.core import artifacts, dataset, params
from pipeline.core import patches as label_patches
from pipeline.learn import fit
from pipeline.stages import assemble, clean, mine


def test_scores_and_data_map_categories():
    probs = np.array([[0.98, 0.01, 0.01], [0.4, 0.35, 0.25], [0.05, 0.9, 0.05]])
    s = mine.scores(probs, np.array([0, 0, 0]))
    assert list(s["hardness"].rank()) == [1.0, 2.0, 3.0]
    assert s["margin"][0] > 0 > s["margin"][2] and s["entropy"].between(0, 1).all()
    dyn = pd.DataFrame(
        {
            "sample_id": ["easy"] * 4 + ["amb"] * 4 + ["hard"] * 4,
            "fold": 0,
            "epoch": [1, 2, 3, 4] * 3,
            "p_given": [0.9, 0.95, 0.97, 0.99, 0.1, 0.9, 0.2, 0.8, 0.05, 0.1, 0.05, 0.1],
        }
    )
    dm = mine.data_map(dyn)
    assert dm.loc["easy", "confidence"] > 0.9 and dm.loc["amb", "variability"] > 0.3
    # oof records only the epochs after its burn-in: the same map as leaving them out here
    late = dyn[dyn["epoch"] > 2]
    pd.testing.assert_frame_equal(mine.data_map(dyn, burn_in=0.5), mine.data_map(late))
    clean_df = pd.DataFrame(
        {"sample_id": ["easy", "amb", "hard"], "split": "train", "label": "a", "label_id": 0, "is_label_issue": False}
    )
    oof_df = pd.DataFrame({"sample_id": ["easy", "amb", "hard"], "probs": list(probs)})
    out, weights, metrics = mine.run(params.parse({}), clean_df, oof_df, dyn)
    assert list(out["category"]) == ["easy", "ambiguous", "hard-to-learn"]
    assert list(out["hard"]) == [False, True, True] and metrics["hard_fraction"] == pytest.approx(2 / 3)
    w = weights["weight"].to_numpy()
    assert w.mean() == pytest.approx(1, abs=1e-5) and w[0] < w[1] < w[2]
    _, off, _ = mine.run(params.parse({"mine": {"enabled": False}}), clean_df, oof_df, dyn)
    assert (off["weight"] == 1.0).all() and list(off["sample_id"]) == list(weights["sample_id"])


def test_suspects_are_not_hard_and_get_their_weight(noisy):
    df, classes, emb, dyn = artifacts.read_oof(noisy[0])
    p = params.parse({"clean": {"inject_noise": NOISE}, "mine": {"suspect_weight": 0.0}})
    cleaned, _ = clean.run(p, df, emb, classes, label_patches.empty())
    out, weights, metrics = mine.run(p, cleaned, df, dyn)
    assert out["suspect"].sum() > 0 and not out.loc[out["suspect"], "hard"].any()
    assert out.loc[out["suspect"], "reason"].str.startswith("suspect").all()
    w = weights.set_index("sample_id")["weight"]
    suspects = out.loc[out["suspect"] & (out["split"] == "train"), "sample_id"]
    assert (w.loc[suspects] == 0).all() and w.drop(suspects).mean() == pytest.approx(1, abs=1e-3)
    assert w.between(0, p.mine.max_weight).all() and len(w) == (cleaned["split"] == "train").sum()
    # mislabeled samples look hard; being suspect is what keeps them out of the hard list
    noisy_ids = cleaned.loc[cleaned["label"] != cleaned["true_label"], "sample_id"]
    assert out.set_index("sample_id").loc[noisy_ids, "hardness"].mean() > out["hardness"].mean()
    top = mine.top_hard(out, 10)
    assert not top["suspect"].any() and top["hardness"].is_monotonic_decreasing


def test_stage_writes_hardness_weights_and_assemble_uses_them(noisy, tmp_path):
    p = ["--quiet", "--params", str(tmp_path / "params.yaml")]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"clean": {"inject_noise": NOISE}}))
    assert (
        cli.main(
            [
                "clean",
                *p,
                "--oof",
                str(noisy[0]),
                "--labels",
                str(tmp_path / "labels"),
                "--out",
                str(tmp_path / "clean"),
                "--metrics",
                str(tmp_path / "c.json"),
                "--plots",
                str(tmp_path / "plots"),
            ]
        )
        == 0
    )
    assert (
        cli.main(
            [
                "mine",
                *p,
                "--oof",
                str(noisy[0]),
                "--clean",
                str(tmp_path / "clean"),
                "--out",
                str(tmp_path / "mine"),
                "--metrics",
                str(tmp_path / "m.json"),
                "--plots",
                str(tmp_path / "plots"),
            ]
        )
        == 0
    )
    hardness = pd.read_parquet(tmp_path / "mine" / mine.HARDNESS)
    assert {
        "sample_id",
        "hardness",
        "loss",
        "margin",
        "entropy",
        "confidence",
        "variability",
        "category",
        "suspect",
        "reason",
    } <= set(hardness)
    assert (tmp_path / "plots" / "hardest.png").exists()
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert 0 < metrics["hard_fraction"] < 1
    assert (
        cli.main(
            [
                "assemble",
                *p,
                "--clean",
                str(tmp_path / "clean"),
                "--mine",
                str(tmp_path / "mine"),
                "--derived",
                "--out",
                str(tmp_path / "asm"),
                "--metrics",
                str(tmp_path / "a.json"),
            ]
        )
        == 0
    )
    asm, _ = dataset.read_manifest(tmp_path / "asm")
    w = pd.read_parquet(tmp_path / "mine" / artifacts.MINE_WEIGHTS).set_index("sample_id")["weight"]
    assert np.allclose(asm["weight"], w.loc[asm["sample_id"]].to_numpy())


def test_assemble_without_weights_is_unchanged(noisy):
    df, _, _, _ = artifacts.read_oof(noisy[0])
    a, _ = assemble.combine(df, {}, 1.0)
    b, _ = assemble.combine(df, {}, 1.0, pd.DataFrame({"sample_id": ["nope"], "weight": [3.0]}))
    assert a.equals(b)


def _state(cfg, weight=None):
    x, y = patterns(160)
    mix = mixing.make_batch_transform(cfg, seed=0)
    return fit.fit(fit.Inputs(x, y, x[:0], y[:0], 4, sample_weight=weight, mix=mix), cfg, 0).model.state_dict()


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "option",
    [{"sampler": "hardness"}, {"ohem_fraction": 0.5}, {"focal_gamma": 2.0}, {"focal_gamma": 2.0, "mixup_alpha": 0.4}],
)
def test_hard_example_options_change_training_deterministically(option):
    base = params.Train(**TINY_TRAIN)
    weight = np.linspace(0.1, 3, 160)
    plain = _state(base, weight)
    cfg = base.model_copy(update=option)
    a, b = _state(cfg, weight), _state(cfg, weight)
    assert _same(a, b) and not _same(a, plain)


def test_off_options_are_byte_identical():
    base = params.Train(**TINY_TRAIN)
    plain = _state(base)
    assert _same(plain, _state(base.model_copy(update={"ohem_fraction": 1.0})))  # all of the batch
    assert _same(
        plain, _state(base.model_copy(update={"sampler": "uniform", "ohem_fraction": 0.0, "focal_gamma": 0.0}))
    )
