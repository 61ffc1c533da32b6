import numpy as np
import pandas as pd
import pytest
import torch
from fit_util import TINY_OOF, TINY_TRAIN, patterns, run_oof, write_split

from pipeline.core import artifacts, dataset, params
from pipeline.core.errors import PipelineError
from pipeline.learn import checkpoints, draws, fit, inference
from pipeline.quality import noise
from pipeline.stages import oof


def test_folds_are_stratified_and_keep_clusters_together():
    df = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(120)],
            "label_id": np.arange(120) % 3,
            "split": ["test" if i >= 90 else "train" for i in range(120)],
            "cluster_id": [f"c{i // 2}" for i in range(120)],
        }
    )
    df["label_id"] = (np.arange(120) // 2) % 3  # clusters are pure in label
    f = oof.folds(df, 3, seed=0)
    assert (f[90:] == -1).all() and set(f[:90]) == {0, 1, 2}
    assert (df.iloc[:90].assign(f=f[:90]).groupby("cluster_id")["f"].nunique() == 1).all()
    counts = pd.crosstab(f[:90], df["label_id"][:90])
    assert counts.to_numpy().min() >= 8 and counts.to_numpy().max() <= 12


def test_stage_outputs_probs_embeddings_dynamics(tmp_path):
    split, out, metrics = run_oof(tmp_path)
    df, classes, emb, dyn = artifacts.read_oof(out)
    split_df, _ = dataset.read_manifest(split)
    assert list(df["sample_id"]) == list(split_df["sample_id"])
    probs = np.stack(df["probs"].to_numpy())
    assert probs.shape == (240, 4) and np.allclose(probs.sum(1), 1, atol=1e-4)
    assert ((df["fold"] >= 0) == df["split"].isin(["train", "val"])).all()
    assert emb.shape[0] == 240 and emb.shape[1] % 3 == 0
    pool = df[df["fold"] >= 0]
    # the fold models are saved: fold 0's predictions on its held-out rows are the oof probs there
    models = checkpoints.fold_models(out)
    held = np.flatnonzero(df["fold"].to_numpy() == 0)
    x = dataset.load_pixels(df.iloc[held])
    assert len(models) == 3 and np.allclose(inference.predict_proba(models[0], x), probs[held], atol=1e-5)
    # every pooled sample is trained on in folds - 1 folds, recorded each epoch after the burn-in (half)
    assert len(dyn) == len(pool) * 2 * (TINY_OOF["epochs"] // 2)
    assert set(dyn["epoch"]) == {3, 4} and dyn["p_given"].between(0, 1).all()
    assert metrics["oof_accuracy"] > 0.6 and metrics["injected_noise"] == 0
    assert (df["label"] == df["true_label"]).all()


def test_test_probs_are_the_mean_of_the_fold_models(tmp_path):
    split, out, _ = run_oof(tmp_path)
    df, classes, _, _ = artifacts.read_oof(out)
    p = params.parse({"train": TINY_TRAIN, "oof": TINY_OOF})
    split_df, _ = dataset.read_manifest(split)
    x, y = dataset.load_pixels(split_df), split_df["label_id"].to_numpy()
    test = np.flatnonzero(df["fold"].to_numpy() < 0)
    mean = np.zeros((len(test), 4))
    for f in range(3):
        idx = np.flatnonzero((df["fold"] >= 0) & (df["fold"] != f))
        model = fit.fit(fit.Inputs(x[idx], y[idx], x[:0], y[:0], 4), oof.train_config(p), 0 + f).model
        mean += inference.predict_proba(model, x[test]) / 3
    assert np.allclose(np.stack(df["probs"].to_numpy()[test]), mean, atol=1e-5)


def test_noise_injection_is_deterministic_train_only_and_keeps_truth(tmp_path):
    split, _, classes = write_split(tmp_path, n=400)
    df, _ = dataset.read_manifest(split)
    cfg = params.InjectNoise(rate=0.3, seed=1)
    a, b = noise.inject_noise(df, cfg, classes), noise.inject_noise(df, cfg, classes)
    assert a.equals(b)
    flipped = a["label_id"] != a["true_label_id"]
    assert (a.loc[flipped, "split"] == "train").all() and 0.2 < flipped[a["split"] == "train"].mean() < 0.4
    assert (a["true_label"] == df["label"]).all()
    pair = noise.inject_noise(df, cfg.model_copy(update={"kind": "pairwise"}), classes)
    moved = pair["label_id"] != pair["true_label_id"]
    assert ((pair.loc[moved, "true_label_id"] + 1) % 4 == pair.loc[moved, "label_id"]).all()
    # explicit pairs swap both ways and leave the other classes alone
    pairs = [(classes[0], classes[2])]
    swap = noise.inject_noise(df, cfg.model_copy(update={"kind": "pairwise", "pairs": pairs}), classes)
    moved = swap["label_id"] != swap["true_label_id"]
    assert (
        set(swap.loc[moved, "true_label_id"]) == {0, 2}
        and (swap.loc[moved, "label_id"] == 2 - swap.loc[moved, "true_label_id"]).all()
    )
    with pytest.raises(PipelineError, match="unknown class 'nope'"):
        noise.inject_noise(df, cfg.model_copy(update={"kind": "pairwise", "pairs": [("nope", classes[0])]}), classes)


def test_on_epoch_end_does_not_change_training():
    x, y = patterns(160)
    cfg = params.Train(**TINY_TRAIN)
    seen = []
    a = fit.fit(fit.Inputs(x, y, x[:0], y[:0], 4), cfg, 0).model.state_dict()
    b = fit.fit(
        fit.Inputs(x, y, x[:0], y[:0], 4),
        cfg,
        0,
        on_epoch_end=lambda m, e: seen.append(inference.predict_proba(m, x).shape),
    ).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and len(seen) == 4


def test_tta_averages_shifted_views(tmp_path):
    _, out, metrics = run_oof(tmp_path, folds=2, epochs=2, tta=True)
    df, _, _, _ = artifacts.read_oof(out)
    probs = np.stack(df["probs"].to_numpy())
    assert metrics["tta"] and np.allclose(probs.sum(1), 1, atol=1e-4)


@pytest.mark.parametrize("rows", [1, 8192])  # one inference batch a job, or one job for all
def test_inference_jobs_give_the_bytes_of_one_call_over_each_group(monkeypatch, rows):
    monkeypatch.setattr(oof, "INFER_ROWS", rows)
    x, y = patterns(300, size=28)  # 128-image inference batches: three jobs for every row
    model = fit.fit(fit.Inputs(x, y, x[:0], y[:0], 4), params.Train(**TINY_TRAIN), 0).model
    groups = [np.arange(0, 300, 2), np.arange(7)]
    probs, emb, tta = oof.infer(model, x, groups, True, "local", threads=1)
    want_p, want_e = inference.predict_embed(model, x)
    assert np.array_equal(probs, want_p) and np.array_equal(emb, want_e)
    for rows, got in zip(groups, tta):
        shifted = [inference.predict_proba(model, np.roll(x[rows], s, axis=a)) for a in (1, 2) for s in (-1, 1)]
        assert np.array_equal(got, np.mean([want_p[rows], *shifted], axis=0).astype(np.float32))
    _, _, plain = oof.infer(model, x, groups, False, "local", threads=1)
    assert all(np.array_equal(got, want_p[rows]) for rows, got in zip(groups, plain))


def test_too_many_folds_for_the_clusters_fails():
    df = pd.DataFrame(
        {"sample_id": list("abcd"), "label_id": [0, 1, 0, 1], "split": "train", "cluster_id": ["x", "x", "y", "y"]}
    )
    with pytest.raises(PipelineError, match="oof.folds: expected at most 2"):
        oof.folds(df, 3, seed=0)


def test_small_data_gets_a_size_aware_schedule():
    p = params.parse({"oof": {"epochs": 8, "min_steps": 1500, "max_epochs": 150}})
    assert oof.train_config(p, 37_000).epochs == 8  # Fashion-MNIST: 289 steps an epoch
    assert oof.train_config(p, 3_200).epochs == 60  # 6,000 images: 25 steps an epoch
    assert oof.train_config(p, 80).epochs == 150  # one step an epoch: capped
    assert oof.train_config(p).epochs == 8


def test_random_shift_moves_each_image_by_at_most_its_margin_reproducibly():
    assert draws.random_shift(0.0, 0) is None
    x = np.zeros((6, 28, 28, 1), np.uint8)
    x[:, 10:18, 10:18] = 255
    shift = draws.random_shift(0.08, seed=3)  # 2 px at 28
    a, b = shift(x, list("abcdef"), 1), shift(x, list("abcdef"), 1)
    assert np.array_equal(a, b) and not np.array_equal(a, shift(x, list("abcdef"), 2))
    for img in a:
        ys, xs = np.nonzero(img[..., 0])
        assert 8 <= ys.min() <= 12 and 8 <= xs.min() <= 12 and img.sum() == x[0].sum()
    assert np.array_equal(shift(x[2:3], ["c"], 1)[0], a[2])  # a sample's shift is its own, whatever the batch
    many = shift(np.repeat(x[:1], 500, 0), [f"s{i}" for i in range(500)], 1)
    assert len({tuple(np.argwhere(img[..., 0]).min(0)) for img in many}) == 25  # every offset of 5 x 5 drawn


def test_shifted_training_with_tta_and_subsampled_dynamics(tmp_path):
    _, out, metrics = run_oof(tmp_path, folds=2, epochs=40, shift=0.1, tta=True)
    _, _, _, dyn = artifacts.read_oof(out)
    assert metrics["epochs"] == 40 and sorted(set(dyn["epoch"])) == [*range(21, 40, 3), 40]  # after the burn-in
    assert metrics["oof_accuracy"] > 0.6


def test_stopping_rows_are_a_seeded_share_of_the_folds_training_rows():
    ids = np.array([f"s{i}" for i in range(300)])
    fit_idx = np.arange(0, 300, 2)  # the other rows are the held-out fold
    train, stop = oof.stopping_rows(ids, fit_idx, 0.1, seed=0, fold=1)
    assert len(stop) == 15 and len(train) == 135 and set(train) | set(stop) == set(fit_idx)
    assert not set(train) & set(stop)
    again = oof.stopping_rows(ids, fit_idx, 0.1, seed=0, fold=1)
    assert np.array_equal(stop, again[1]) and not np.array_equal(stop, oof.stopping_rows(ids, fit_idx, 0.1, 0, 2)[1])
    assert len(oof.stopping_rows(ids, fit_idx, 0.0, 0, 1)[1]) == 0


def test_a_plateau_stops_the_fold_models_and_large_images_are_seen_smaller(tmp_path):
    _, out, metrics = run_oof(tmp_path / "stop", epochs=40, holdout=0.2, patience=2)
    assert metrics["epochs"] == 40 and all(e < 40 for e in metrics["epochs_run"]), metrics["epochs_run"]
    assert metrics["input_size"] is None  # 8 px images: under oof.image_size, taken as they are
    x, _ = patterns(120, 16, 1, 4, 0)
    assert (
        oof.fold_input_size(8, x) == 8 and oof.fold_input_size(32, x) is None and oof.fold_input_size(None, x) is None
    )
