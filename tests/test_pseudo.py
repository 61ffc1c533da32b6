import json

import numpy as np
import pandas as pd
import pytest
import yaml
from fit_util import TINY_OOF, TINY_TRAIN, write_split

from pipeline import __main__ as cli
from pipeline.core import artifacts, dataset, params, schema
from pipeline.core import patches as label_patches
from pipeline.learn import fit
from pipeline.stages import assemble, clean, pseudo

CFG = params.Pseudo(portion=1.0, precision=1.0, min_agreement=0.0, neighbours=0, balance=10.0)


def _probs(conf, pred, k=3):
    p = np.full((len(conf), k), 0.0)
    for i, (c, j) in enumerate(zip(conf, pred)):
        p[i] = (1 - c) / (k - 1)
        p[i, j] = c
    return p


def test_per_class_thresholds_keep_a_hard_class_beside_an_easy_one():
    # class 0 is easy (confident), class 1 hard: one global top-half cut would keep only class 0
    conf = [0.99, 0.98, 0.97, 0.96, 0.6, 0.58, 0.56, 0.54]
    keep, rep = pseudo.select(_probs(conf, [0, 0, 0, 0, 1, 1, 1, 1]), CFG, 0.5, 0.0, np.array([0.5, 0.5, 0]))
    assert keep.tolist() == [True, True, False, False, True, True, False, False]
    assert rep["per_class"] == [2, 2, 0] and rep["dropped"]["below_class_threshold"] == 4
    assert rep["thresholds"][2] is None  # nobody predicted as class 2


def test_every_rule_drops_and_counts_add_up():
    probs = _probs([0.9] * 6, [0, 0, 0, 1, 1, 2])
    agreement = np.array([1.0, 0.5, 1.0, 1.0, 1.0, 1.0])
    neighbours = np.array([0, 0, 1, 1, 1, 2])
    duplicate = np.array([-1, -1, -1, 2, -1, -1])
    cfg = CFG.model_copy(update={"min_agreement": 1.0, "balance": 1.0})
    share = np.array([0.2, 0.4, 0.4])
    keep, rep = pseudo.select(probs, cfg, 1.0, 0.95, share, agreement, neighbours, duplicate)
    assert rep["dropped"]["below_class_threshold"] == 6 and not keep.any()  # the floor is above every 0.9
    keep, rep = pseudo.select(probs, cfg, 1.0, 0.5, share, agreement, neighbours, duplicate)
    d = rep["dropped"]
    assert (d["ensemble_disagrees"], d["neighbours_disagree"], d["duplicate_label_conflict"]) == (1, 1, 1)
    # left: rows 0, 4, 5 (classes 0, 1, 2); class 0's cap is ceil(1.0 * 0.2 * 3) = 1: all stay
    assert keep.tolist() == [True, False, False, False, True, True] and d["class_balance_cap"] == 0
    keep, rep = pseudo.select(_probs([0.9, 0.95, 0.99, 0.9], [0, 0, 0, 1]), cfg, 1.0, 0.5, share)
    assert keep.tolist() == [False, False, True, True] and rep["dropped"]["class_balance_cap"] == 2
    assert rep["pool"] == rep["kept"] + sum(rep["dropped"].values())


def test_the_confidence_floor_follows_the_teachers_calibration():
    y = np.array([0, 0, 0, 0, 1])
    probs = _probs([0.99, 0.9, 0.8, 0.7, 0.6], [0, 0, 1, 0, 1])  # the third is wrong
    assert pseudo.confidence_floor(probs, y, 1.0) == pytest.approx(0.9)
    assert pseudo.confidence_floor(probs, y, 0.8) == pytest.approx(0.6)  # 4 of 5 right
    assert pseudo.confidence_floor(probs[2:3], y[2:3], 0.5) == np.inf
    assert pseudo.confidence_floor(probs[:0], y[:0], 0.5) == np.inf


def test_neighbour_vote_is_the_majority_of_the_nearest_labeled():
    ref = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.2, 0.8]], np.float32)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    vote = pseudo.neighbour_vote(np.array([[1, 0.05], [0.05, 1]], np.float32), ref, np.array([0, 0, 1, 1, 1]), 3)
    assert vote.tolist() == [0, 1]


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    """oof + clean outputs over 320 tiny samples: 40% of train labeled, the rest an unlabeled pool
    with the truth in `hidden_label`."""
    tmp = tmp_path_factory.mktemp("pooled")
    split, _, classes = write_split(tmp / "data", n=320, fractions=(0.7, 0.15, 0.15))
    df, _ = dataset.read_manifest(split)
    df["cluster_id"] = df["sample_id"]
    pool = (df["split"] == "train").to_numpy() & (np.arange(len(df)) % 5 >= 2)
    df.insert(8, "hidden_label", None)
    df.loc[pool, "hidden_label"] = df.loc[pool, "label"]
    df.loc[pool, ["label", "split"]] = [None, schema.POOL]
    df.loc[pool, "label_id"] = -1
    dataset.write_manifest(df, split / dataset.MANIFEST, classes)
    cfg = {"train": {**TINY_TRAIN, "epochs": 3, "min_steps": 0}, "oof": {**TINY_OOF, "epochs": 8}}
    (tmp / "params.yaml").write_text(yaml.safe_dump(cfg))
    args = ["oof", "--quiet", "--params", str(tmp / "params.yaml"), "--split", str(split), "--out", str(tmp / "oof")]
    args += ["--labels", str(tmp / "patches.csv"), "--embed", "none"]
    assert cli.main([*args, "--metrics", str(tmp / "oof.json")]) == 0
    oof_df, classes, emb, _ = artifacts.read_oof(tmp / "oof")
    clean_df, clean_metrics = clean.run(params.parse(cfg), oof_df, emb, classes, label_patches.empty())
    return tmp, cfg, oof_df, emb, clean_df, clean_metrics, classes


def test_oof_predicts_the_pool_with_agreement_and_clean_passes_it_through(pooled):
    tmp, _, oof_df, _, clean_df, metrics, _ = pooled
    pool = oof_df["split"] == schema.POOL
    assert json.loads((tmp / "oof.json").read_text())["n_unlabeled"] == pool.sum() > 100
    assert (oof_df.loc[pool, "fold"] == -1).all() and oof_df.loc[pool, "agreement"].between(0, 1).all()
    assert (
        oof_df.loc[pool, "disagreement"].ge(0).all()
        and oof_df.loc[~pool & (oof_df["fold"] >= 0), "agreement"].isna().all()
    )
    assert metrics["unlabeled"] == pool.sum() and (clean_df.loc[pool, "split"] == schema.POOL).all()
    assert not clean_df.loc[pool].filter(like="_issue").any().any()  # never flagged
    assert clean_df.loc[pool, "label_score"].isna().all() and clean_df.loc[~pool, "label_score"].notna().all()
    assert clean_df.loc[pool, "suggested_label"].notna().all()


def test_pseudo_rows_carry_lineage_and_assemble_admits_them(pooled):
    _, cfg, oof_df, emb, clean_df, _, classes = pooled
    p = params.parse({**cfg, "pseudo": {"precision": 0.9, "neighbours": 3}})
    df, metrics = pseudo.run(p, clean_df, oof_df, emb, classes)
    r = metrics["rounds"][0]
    assert r["pool"] == (clean_df["split"] == schema.POOL).sum() and 0 < r["kept"] == len(df) < r["pool"]
    assert r["pool"] == r["kept"] + sum(r["dropped"].values())
    parents = clean_df.set_index("sample_id").loc[df["parent_id"]]
    assert (parents["split"] == schema.POOL).all() and (df["split"] == "train").all()
    assert (df["origin"] == schema.PSEUDO).all() and (df["label"] == [classes[i] for i in df["label_id"]]).all()
    assert (df[list(schema.STORAGE)].to_numpy() == parents[list(schema.STORAGE)].to_numpy()).all()
    assert df["confidence"].between(0, 1).all() and (df["weight"] == p.pseudo.weight).all()
    truth = parents["hidden_label"].to_numpy()
    assert r["precision"] == pytest.approx((df["label"].to_numpy() == truth).mean(), abs=1e-6) and r["precision"] > 0.8
    schema.require(df, "derived", "pseudo")
    out, m = assemble.combine(clean_df, {"pseudo": df}, 1.0)
    assert m["by_origin"]["pseudo"] == len(df) and schema.POOL not in set(out["split"])
    assert not out["sample_id"].isin(clean_df.loc[clean_df["split"] == schema.POOL, "sample_id"]).any()


def test_a_pool_image_clustered_with_a_labeled_one_takes_its_label_or_none(pooled):
    _, cfg, oof_df, emb, clean_df, _, classes = pooled
    p = params.parse({**cfg, "pseudo": {"precision": 0.5, "portion": 1.0, "min_agreement": 0.0, "neighbours": 0}})
    base, _ = pseudo.run(p, clean_df, oof_df, emb, classes)
    sid, given = base["parent_id"].iloc[0], int(base["label_id"].iloc[0])
    i = int(np.flatnonzero(clean_df["sample_id"] == sid)[0])
    j = int(np.flatnonzero(clean_df["split"] == "train")[0])
    for label, kept in [(given, True), ((given + 1) % len(classes), False)]:
        dup = clean_df.copy()
        dup.loc[i, "cluster_id"], dup.loc[j, "label_id"] = dup.loc[j, "cluster_id"], label
        df, metrics = pseudo.run(p, dup, oof_df, emb, classes)
        assert (sid in set(df["parent_id"])) == kept
        assert metrics["rounds"][0]["dropped"]["duplicate_label_conflict"] == (not kept)


def test_self_training_rounds_grow_the_portion_and_stay_reproducible(pooled):
    _, cfg, oof_df, emb, clean_df, _, classes = pooled
    p = params.parse({**cfg, "pseudo": {"rounds": 2, "precision": 0.9, "student_epochs": 3}})
    df, metrics = pseudo.run(p, clean_df, oof_df, emb, classes)
    one, two = metrics["rounds"]
    assert two["teacher"] == "student 1" and two["portion"] == pytest.approx(one["portion"] + 0.2)
    assert two["student"]["n_train"] == (clean_df["split"] == "train").sum() + one["kept"]
    assert (df["pseudo_round"] == 2).all() and len(df) == two["kept"] and metrics["kept"] == two["kept"]
    again, _ = pseudo.run(p, clean_df, oof_df, emb, classes)
    pd.testing.assert_frame_equal(df, again)


def test_students_take_trains_noise_and_the_teachers_soft_targets(pooled, monkeypatch):
    _, cfg, oof_df, emb, clean_df, _, classes = pooled
    seen, real = [], fit.fit
    monkeypatch.setattr(fit, "fit", lambda inputs, *a, **kw: seen.append(vars(inputs)) or real(inputs, *a, **kw))
    plain = {**cfg, "pseudo": {"rounds": 2, "precision": 0.9, "student_epochs": 3}}
    pseudo.run(params.parse(plain), clean_df, oof_df, emb, classes)
    assert seen[-1]["mix"] is None and seen[-1]["soft_targets"] is None
    noisy = params.parse({**plain, "train": {**cfg["train"], "random_erasing": 0.5, "soft_labels": 0.4}})
    pseudo.run(noisy, clean_df, oof_df, emb, classes)
    kw = seen[-1]
    assert kw["mix"] is not None and kw["mix"].random_erasing == 0.5
    # the student's rows: labeled train, then round 1's pseudo-labels (what one round keeps)
    first, _ = pseudo.run(
        params.parse({**plain, "pseudo": {**plain["pseudo"], "rounds": 1}}), clean_df, oof_df, emb, classes
    )
    probs = oof_df.set_index("sample_id")[artifacts.PROBS]
    labeled = clean_df.loc[(clean_df["split"] == "train") & (clean_df["label_id"] >= 0), "sample_id"]
    teacher = np.stack(probs.loc[[*labeled, *first["parent_id"]]].to_numpy())
    y = np.concatenate([clean_df.set_index("sample_id").loc[labeled, "label_id"], first["label_id"]])
    hard = np.full(teacher.shape, noisy.train.label_smoothing / len(classes))
    hard[np.arange(len(y)), y] += 1 - noisy.train.label_smoothing
    np.testing.assert_allclose(kw["soft_targets"], 0.6 * hard + 0.4 * teacher, atol=1e-6)


def test_no_pool_or_disabled_writes_a_valid_empty_manifest(pooled, tmp_path):
    _, cfg, oof_df, emb, clean_df, _, classes = pooled
    for p, frame in [
        (params.parse({**cfg, "pseudo": {"enabled": False}}), clean_df),
        (params.parse(cfg), clean_df.assign(split=clean_df["split"].replace(schema.POOL, "removed"))),
    ]:
        df, metrics = pseudo.run(p, frame, oof_df, emb, classes)
        assert len(df) == 0 and metrics["pool"] == 0 and metrics["kept"] == 0 and metrics["rounds"] == []
        dataset.write_manifest(df, tmp_path / dataset.MANIFEST, classes)
        back, _ = schema.read(tmp_path, "derived")
        assert len(assemble.combine(frame, {"pseudo": back}, 1.0)[0]) == (frame["split"] == "train").sum()


def test_a_human_label_moves_a_pool_sample_into_train(pooled):
    _, cfg, oof_df, emb, _, _, classes = pooled
    sid = oof_df.loc[oof_df["split"] == schema.POOL, "sample_id"].iloc[0]
    patch = pd.DataFrame({"sample_id": [sid], "old_label": [""], "label": [classes[1]], "consensus_quality": [1.0]})
    df, metrics = clean.run(params.parse(cfg), oof_df, emb, classes, patch.reindex(columns=label_patches.COLUMNS))
    row = df.set_index("sample_id").loc[sid]
    assert row["split"] == "train" and row["label"] == classes[1] and row["label_id"] == 1
    assert (
        metrics["patches"]["pool_to_train"] == 1 and metrics["unlabeled"] == (oof_df["split"] == schema.POOL).sum() - 1
    )


def test_the_fold_models_train_on_human_labels_of_pool_samples(pooled):
    from pipeline.stages import oof

    tmp, cfg, oof_df, _, _, _, classes = pooled
    split_df, _ = dataset.read_manifest(tmp / "data" / "split")
    pool_ids = split_df.loc[split_df["split"] == schema.POOL, "sample_id"].head(30).tolist()
    truth = split_df.set_index("sample_id").loc[pool_ids, "hidden_label"].tolist()
    patch = pd.DataFrame({"sample_id": pool_ids, "old_label": "", "label": truth, "consensus_quality": 1.0})
    df, _, dyn, metrics, _ = oof.run(
        params.parse(cfg), split_df, classes, patches=patch.reindex(columns=label_patches.COLUMNS)
    )
    rows = df.set_index("sample_id").loc[pool_ids]
    assert metrics["human_labels"] == 30 and metrics["n_unlabeled"] == (split_df["split"] == schema.POOL).sum() - 30
    assert (rows["fold"] >= 0).all() and (rows["split"] == schema.POOL).all() and rows["label"].isna().all()
    assert set(pool_ids) <= set(dyn["sample_id"])  # trained on, with their human labels
    assert metrics["n_oof"] == (oof_df["fold"] >= 0).sum() + 30
