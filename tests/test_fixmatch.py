"""FixMatch (train.unlabeled): the pool as a consistency loss inside fit, and the train stage's pool."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from fit_util import RANDAUGMENT, patterns, write_split

from pipeline import __main__ as cli
from pipeline.augment import mixing, policy
from pipeline.core import dataset, params
from pipeline.core.errors import PipelineError
from pipeline.core.params import Params
from pipeline.learn import draws, fit, fixmatch, inference
from pipeline.stages import train as train_stage

CFG = params.Train(epochs=12, batch_size=8, width=8, lr=1e-2, threads=1, label_smoothing=0.0)


def test_cutout_fills_one_square_per_image_drawn_per_sample_and_epoch():
    x = np.zeros((200, 16, 16, 1), np.uint8)
    ids = [f"p{i}" for i in range(200)]
    cut = fixmatch.random_cutout(0.5, seed=3)
    a, b, c = cut(x, ids, 1), cut(x, ids, 1), cut(x, ids, 2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert set(np.unique(a)) <= {0, 127} and not x.any()  # grey, on a copy
    for img in a[..., 0]:
        rows, cols = np.flatnonzero(img.any(1)), np.flatnonzero(img.any(0))
        if len(rows):  # one axis-aligned block (a square, clipped at the edges), at most 8 px a side
            assert img[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
            assert len(rows) <= 8 and len(cols) <= 8 and img.sum() == 127 * len(rows) * len(cols)
    assert (a.reshape(200, -1) > 0).any(1).mean() > 0.8  # most images lose a patch


def _pool(x, ids, truth=None, weight=1.0, seed=0):
    _, strong = policy.load_path(RANDAUGMENT)
    strong = mixing.make_online_policy(strong, seed)
    return fixmatch.make(x, ids, strong, seed, weight, 3, 0.95, cutout=0.25, truth=truth)


def test_fixmatch_learns_from_the_pool_reproducibly_and_reports_its_targets():
    # two labeled digits per class, 1,000 in the pool: against the same labeled training (weak
    # views included), the pool's confident predictions made consistent under strong noise
    # lift test accuracy (seeds 0, 1, 2 measured: 0.59 -> 0.77, 0.64 -> 0.76, 0.70 -> 0.82)
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.images * 255 / 16).round().astype(np.uint8)[..., None], d.target
    lab = np.concatenate([np.flatnonzero(y == c)[:2] for c in range(10)])
    rest = np.setdiff1d(np.arange(len(y)), lab)
    pool, val, test = rest[:1000], rest[1000:1100], rest[1100:]
    cfg = CFG.model_copy(update={"epochs": 200, "patience": 10_000, "batch_size": 20})
    ids = [f"l{i}" for i in lab]
    sup = fit.fit(
        fit.Inputs(x[lab], y[lab], x[val], y[val], 10, sample_ids=ids, online=draws.random_shift(0.125, 0)), cfg, 0
    )
    pool_ids = [f"u{i}" for i in pool]
    runs = [
        fit.fit(
            fit.Inputs(x[lab], y[lab], x[val], y[val], 10, sample_ids=ids, unlabeled=_pool(x[pool], pool_ids, y[pool])),
            cfg,
            0,
        )
        for _ in "ab"
    ]

    def accuracy(model):
        return float((inference.predict_proba(model, x[test]).argmax(1) == y[test]).mean())

    a, b = (r.model.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)  # reproducible
    last = runs[0].history[-1]
    assert {"unlabeled_loss", "mask_rate", "mask_precision"} <= set(last)
    assert last["mask_rate"] > 0.2 and last["mask_precision"] > 0.8
    assert accuracy(runs[0].model) > accuracy(sup.model) + 0.05, (accuracy(runs[0].model), accuracy(sup.model))


def test_fit_level_pool_reports_without_truth_and_caps_each_step_at_the_pool():
    x, y = patterns(200, size=8, k=4, seed=2)
    unlabeled = _pool(x[100:], [f"u{i}" for i in range(100)], weight=0.0)
    r = fit.fit(
        fit.Inputs(x[:40], y[:40], x[40:100], y[40:100], 4, unlabeled=unlabeled),
        CFG.model_copy(update={"epochs": 2}),
        0,
    )
    assert r.history[-1]["unlabeled_loss"] >= 0 and "mask_precision" not in r.history[-1]  # no truth given
    assert unlabeled.per_step(8) == 24 and unlabeled.per_step(40) == 100  # ratio 3, at most the pool


def test_a_small_pool_drawn_twice_an_epoch_gets_new_views_each_pass():
    x, _ = patterns(50, size=8, k=4, seed=3)
    u = _pool(x, [f"u{i}" for i in range(50)])
    one = u.order(30, torch.Generator().manual_seed(0), epoch=4)
    assert set(one[:, 1].tolist()) == {4}  # one pass: the epoch is the view key (the benchmarks' case)
    two = u.order(100, torch.Generator().manual_seed(0), epoch=3)
    assert sorted(two[:, 0].tolist()) == sorted(list(range(50)) * 2)  # two whole permutations
    assert two[:50, 1].unique().tolist() == [5] and two[50:, 1].unique().tolist() == [6]  # (3 - 1) x 2 + pass + 1
    seam = torch.cat([two[45:50], two[50:55]])  # a step across the two passes
    strong = fixmatch._views(
        u.strong, x[seam[:, 0].numpy()], [f"u{i}" for i in seam[:, 0].tolist()], seam[:, 1].numpy()
    )
    alone = u.strong(x[two[45:50, 0].numpy()], [f"u{i}" for i in two[45:50, 0].tolist()], 5)
    assert np.array_equal(strong[:5], alone)  # each part under its own pass's key
    first = {int(i): k for i, k in two[:50].tolist()}
    i = int(two[50, 0])
    views = [u.strong(x[[i]], [f"u{i}"], k) for k in (first[i], int(two[50, 1]))]
    assert not np.array_equal(*views)  # the same image, another pass: other views


def test_an_empty_pool_is_refused_by_name():
    with pytest.raises(PipelineError, match="pool is empty"):
        _pool(np.zeros((0, 8, 8, 1), np.uint8), [])


def _argv(tmp_path, split, assemble, **train) -> list[str]:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": train}))
    flags = {"--assemble": assemble, "--split": split, "--oof": tmp_path / "no-oof", "--policy": RANDAUGMENT}
    flags |= {"--unlabeled-policy": RANDAUGMENT, "--model": tmp_path / "m.pt", "--metrics": tmp_path / "t.json"}
    flags |= {"--plots": tmp_path / "plots"}
    return ["train", "--quiet", "--params", str(tmp_path / "params.yaml"), *map(str, sum(flags.items(), ()))]


def _stage(tmp_path, split, assemble, **unlabeled) -> dict:
    recipe = {"epochs": 2, "batch_size": 16, "width": 8, "threads": 1, "min_steps": 0, "unlabeled": unlabeled}
    assert cli.main(_argv(tmp_path, split, assemble, **recipe)) == 0
    return json.loads((tmp_path / "t.json").read_text())


def _with_pool(split, n: int) -> list[str]:
    """Turn the first `n` train rows of a split manifest into the pool (truth hidden, as ingest.keep_labels does)."""
    df, classes = dataset.read_manifest(split / dataset.MANIFEST)
    rows = df.index[df["split"] == "train"][:n]
    df["hidden_label"] = None
    df.loc[rows, "hidden_label"] = df.loc[rows, "label"]
    df.loc[rows, ["split", "label"]] = ["unlabeled", None]
    df.loc[rows, "label_id"] = -1
    dataset.write_manifest(df, split / dataset.MANIFEST, classes)
    return df.loc[rows, "sample_id"].tolist()


def test_train_stage_takes_the_pool_from_the_split_and_only_it(tmp_path):
    split, assemble, classes = write_split(tmp_path)
    pool_ids = _with_pool(split, 60)
    df, _ = dataset.read_manifest(split / dataset.MANIFEST)
    p = Params.model_validate({"train": {"unlabeled": {"weight": 1.0}}})
    unlabeled = train_stage.pool(p, df, classes, RANDAUGMENT)
    assert unlabeled.ids == pool_ids and set(unlabeled.ids).isdisjoint(df.loc[df["split"] != "unlabeled", "sample_id"])
    assert (unlabeled.truth >= 0).all()  # hidden labels: the truth of every pool image
    m = _stage(tmp_path, split, assemble, weight=1.0, ratio=2)
    assert m["unlabeled"]["pool"] == 60 and m["unlabeled"]["epoch"] == m["epochs_run"]
    assert 0 <= m["unlabeled"]["mask_rate"] <= 1
    assert {"unlabeled_loss", "mask_rate", "mask_precision"} <= set(pd.read_csv(tmp_path / "plots" / "curves.csv"))


def test_train_stage_with_fixmatch_on_and_no_pool_trains_supervised(tmp_path, caplog):
    split, assemble, _ = write_split(tmp_path)
    m = _stage(tmp_path, split, assemble, weight=1.0)
    assert "unlabeled" not in m and "the pool is empty" in caplog.text


def test_fixmatch_with_ddp_is_refused_before_any_worker_starts(tmp_path, capsys):
    split, assemble, _ = write_split(tmp_path)
    argv = _argv(tmp_path, split, assemble, nproc=2, unlabeled={"weight": 1.0})
    assert cli.main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs in one process" in err[0] and "DDP processes" not in err[0]
