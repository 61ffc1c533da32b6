import json

import numpy as np
import pandas as pd
import pytest
import yaml
from fit_util import NOISE

from pipeline import __main__ as cli
from pipeline.core import artifacts, dataset, params
from pipeline.core import patches as label_patches
from pipeline.core.errors import PipelineError
from pipeline.quality import issues
from pipeline.stages import clean


def _clean(noisy, patches=None, **clean_cfg):
    df, classes, emb, _ = artifacts.read_oof(noisy[0])
    p = params.parse({"clean": {"inject_noise": NOISE, **clean_cfg}})
    return clean.run(p, df, emb, classes, label_patches.empty() if patches is None else patches)


def test_injected_noise_is_detected(noisy):
    df, metrics = _clean(noisy)
    d = metrics["detection"]
    assert d["noisy"] == noisy[1]["injected_noise"] > 20
    assert d["f1"] >= 0.7 and d["precision"] >= 0.6 and d["recall"] >= 0.6, d
    for c in ("sample_id", "path", "label", "split", "is_label_issue", "label_score", "suggested_label"):
        assert c in df
    # lower label score = more likely wrong
    wrong = df["label"] != df["true_label"]
    assert df.loc[wrong, "label_score"].mean() < df.loc[~wrong, "label_score"].mean()
    assert set(metrics["issues"]) == set(issues.REGISTRY)


def test_flag_changes_nothing_and_val_test_are_only_flagged(noisy):
    df, metrics = _clean(noisy)
    base, _, _, _ = artifacts.read_oof(noisy[0])
    assert (df["label"] == base["label"]).all() and (df["split"] == base["split"]).all()
    assert metrics["removed"] == metrics["relabeled"] == 0
    assert (df["needs_review"] == df.filter(like="_issue").any(axis=1)).all()


def test_remove_touches_train_only_and_keeps_rows(noisy):
    df, metrics = _clean(noisy, action="remove")
    base, _, _, _ = artifacts.read_oof(noisy[0])
    assert len(df) == len(base)
    gone = df["split"] == "removed"
    assert gone.sum() == metrics["removed"] > 0
    assert (base.loc[gone, "split"] == "train").all() and (df.loc[gone, "removed_reason"] == "label_issue").all()
    assert (df.loc[gone, "is_label_issue"]).all()
    held = base["split"].isin(["val", "test"])
    assert (df.loc[held, "split"] == base.loc[held, "split"]).all()


@pytest.mark.parametrize("threshold", [0.5, 0.95])
def test_relabel_train_only_above_threshold(noisy, threshold):
    df, metrics = _clean(noisy, action="relabel", relabel_threshold=threshold)
    changed = df["label"] != df["given_label"]
    assert changed.sum() == metrics["relabeled"] > 0
    assert (df.loc[changed, "split"] == "train").all()
    assert (df.loc[changed, "suggested_prob"] >= threshold).all()
    assert (df.loc[changed, "label"] == df.loc[changed, "suggested_label"]).all()
    assert (df["label_id"] == df["label"].map({c: i for i, c in enumerate(sorted(set(df["label"])))})).all()
    assert metrics["detection"]["relabel_accuracy"] > 0.8
    if threshold == 0.95:
        low, _ = _clean(noisy, action="relabel", relabel_threshold=0.5)
        assert changed.sum() <= (low["label"] != low["given_label"]).sum()


def test_patches_override_labels_and_are_not_flagged(noisy):
    first, _ = _clean(noisy)
    flagged = first[first["is_label_issue"]].head(5)
    patch = pd.DataFrame(
        {
            "sample_id": flagged["sample_id"],
            "label": flagged["true_label"],
            "old_label": flagged["label"],
            "consensus_quality": 1.0,
        }
    )
    df, metrics = _clean(noisy, patches=patch)
    rows = df.set_index("sample_id").loc[flagged["sample_id"]]
    assert (rows["label"] == flagged["true_label"].to_numpy()).all()
    assert not rows.filter(like="_issue").to_numpy().any() and not rows["needs_review"].any()
    assert metrics["patches"]["applied"] == 5


def test_nearest_cosine_on_fewer_rows_than_pca_dims():
    # 24 samples of 64x64x3 pixels: a split this small once crashed the PCA (n_components=64 > 24)
    x = np.random.default_rng(0).integers(0, 255, (24, 64 * 64 * 3)).astype(np.float32)
    x[5] = x[3]
    dist, index = issues.nearest_cosine(x)
    assert index[5] == 3 and dist[5] == pytest.approx(0, abs=1e-6) and len(dist) == 24


def test_weak_oof_and_a_high_flag_rate_warn_in_one_line_each():
    p = params.parse({})
    quiet = {"oof_accuracy": 0.9, "oof_trusted": True, "flag_rates": {"label": 0.05}, "issues": {"label": {"total": 5}}}
    assert clean.warnings(p, quiet) == []
    loud = {
        "oof_accuracy": 0.5,
        "oof_trusted": False,
        "flag_rates": {"label": 0.35, "near_duplicate": 1.0},
        "issues": {"label": {"total": 35}, "near_duplicate": {"total": 100}},
    }
    lines = clean.warnings(p, loud)
    assert len(lines) == 3 and "0.50 < clean.min_oof_accuracy 0.75" in lines[0]
    assert "near_duplicate flags 100 samples (100%)" in lines[2] and all("\n" not in ln for ln in lines)


def test_patch_file_missing_means_no_patches(tmp_path):
    assert len(clean.load_patches(tmp_path / "nothing.csv", ["a"])) == 0


def test_unknown_detector_lists_the_valid_ones():
    with pytest.raises(PipelineError, match="must be one of .*label.*outlier"):
        issues.get("lable")
    with pytest.raises(PipelineError, match="clean.issues"):
        params.parse({"clean": {"issues": {"lable": {}}}})
    with pytest.raises(PipelineError, match="clean.issues.outlier.k"):
        issues.get("outlier", {"k": 0})


@pytest.mark.parametrize("name", sorted(issues.REGISTRY))
def test_every_detector_writes_its_columns(noisy, name):
    df, classes, emb, _ = artifacts.read_oof(noisy[0])
    found = issues.get(name).find(df, issues.OofArrays(np.stack(df["probs"].to_numpy()), emb))
    assert found[f"is_{name}_issue"].dtype == bool and found[f"{name}_score"].between(0, 1).all()
    assert len(found) == len(df)


def test_near_duplicates_within_a_split_and_imbalance():
    emb = np.eye(6)[[0, 0, 1, 2, 2, 1]].astype(np.float32)
    df = pd.DataFrame(
        {"sample_id": list("abcdef"), "split": ["train"] * 3 + ["test"] * 3, "label_id": [0, 0, 0, 0, 1, 1]}
    )
    arrays = issues.OofArrays(np.full((6, 2), 0.5), emb)
    nd = issues.get("near_duplicate", {"features": "embeddings"}).find(df, arrays)
    assert list(nd["is_near_duplicate_issue"]) == [True, True, False, True, True, False]  # c ~ f: other split
    assert list(nd["near_duplicate_of"][:2]) == ["b", "a"]
    clustered = issues.get("near_duplicate", {"features": "embeddings"}).find(
        df.assign(dup_group=["x", "y", "y", None, "w", "x"]), arrays
    )  # a split's duplicate set counts
    assert clustered["is_near_duplicate_issue"][2] and not clustered["is_near_duplicate_issue"][5]
    # the default: the split's verified duplicate sets only; groups (cluster_id) are not duplicates
    verified = issues.get("near_duplicate").find(
        df.assign(dup_group=["a", "a", None, "d", "d", "d"], cluster_id=["a", "a", "a", "d", "d", "d"]), arrays
    )
    assert list(verified["is_near_duplicate_issue"]) == [True, True, False, True, True, True]
    assert list(verified["near_duplicate_of"]) == ["b", "a", "", "e", "d", "d"]
    assert list(verified["near_duplicate_score"]) == [0, 0, 1, 0, 0, 0]
    imb = issues.get("class_imbalance", {"threshold": 0.9}).find(df, arrays)
    assert not imb["is_class_imbalance_issue"][:3].any()  # train: all one class, nothing rarer
    assert list(imb["is_class_imbalance_issue"][3:]) == [True, False, False]  # test: 1 vs 2 (mean 1.5)


def test_stage_writes_manifest_metrics_and_gallery(noisy, tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"clean": {"inject_noise": NOISE}}))
    assert (
        cli.main(
            [
                "clean",
                "--quiet",
                "--params",
                str(tmp_path / "params.yaml"),
                "--oof",
                str(noisy[0]),
                "--labels",
                str(tmp_path / "labels"),
                "--out",
                str(tmp_path / "clean"),
                "--metrics",
                str(tmp_path / "clean.json"),
                "--plots",
                str(tmp_path / "plots"),
            ]
        )
        == 0
    )
    df, _ = dataset.read_manifest(tmp_path / "clean")
    assert len(dataset.load_pixels(df)) == len(df)
    metrics = json.loads((tmp_path / "clean.json").read_text())
    assert metrics["filter_by"] == "low_self_confidence" and "estimated_noise_rate" in metrics
    assert (tmp_path / "plots" / "label_issues.png").exists()


def test_remove_near_duplicates_keeps_one_of_each_pair():
    df = pd.DataFrame(
        {
            "sample_id": list("abcd"),
            "split": "train",
            "label": "x",
            "label_id": 0,
            "is_near_duplicate_issue": [True, True, False, False],
            "near_duplicate_of": ["b", "a", "", ""],
        }
    )
    p = params.parse({"clean": {"action": "remove", "remove_issues": ["near_duplicate"]}})
    out, counts = clean.act(p, df, ["x"])
    assert list(out["split"]) == ["train", "removed", "train", "train"] and counts["removed"] == 1


def test_removals_by_the_split_stage_keep_their_reason():
    from pipeline.core.params import parse
    from pipeline.stages import clean

    df = pd.DataFrame(
        {
            "sample_id": ["a", "b", "c"],
            "label": ["x", "x", "y"],
            "label_id": [0, 0, 1],
            "split": ["train", "removed", "train"],
            "removed_reason": ["", "near_duplicate_of_test", ""],
            "is_label_issue": [False, False, True],
        }
    )
    params = parse({"clean": {"action": "remove", "remove_issues": ["label"]}})
    out, counts = clean.act(params, df, ["x", "y"])
    assert list(out["removed_reason"]) == ["", "near_duplicate_of_test", "label_issue"]
    assert list(out["split"]) == ["train", "removed", "removed"] and counts["removed"] == 1


def test_outlier_scores_are_cleanlabs_from_one_knn_pass():
    from cleanlab.outlier import OutOfDistribution

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (300, 24)) + 4 * rng.normal(0, 1, (1, 24)), rng.normal(0, 3, (12, 24))])
    x = np.concatenate([x, x[:5]]).astype(np.float32)  # exact duplicates: distance 0, score 1
    ours = issues.ood_scores(issues.knn_cosine(x, 10))
    theirs = OutOfDistribution(params={"k": 10}).fit_score(features=x, verbose=False)
    assert np.allclose(ours, theirs, atol=1e-5)
    assert set(np.argsort(ours)[:12]) == set(np.argsort(theirs)[:12])
