"""The policy-search stage on tiny data: the learned file is a valid, canonical AutoAugment policy
with its scores; the same inputs give the same file; the scoring prefers a mild op to a
destructive one; Identity-like candidates are never kept; missing fold models fail clearly."""

import json
import shutil

import numpy as np
import pytest
import yaml
from fit_util import write_split

from pipeline import __main__ as cli
from pipeline.augment import ops
from pipeline.augment import policy as pol
from pipeline.core import artifacts, dataset, params
from pipeline.core.errors import PipelineError
from pipeline.learn import checkpoints
from pipeline.stages import policy_search as search

TINY_TRAIN = {"epochs": 4, "batch_size": 32, "width": 8, "lr": 0.01, "threads": 1}
TINY_SEARCH = {"candidates": 12, "max_samples": 40, "top": 2}


@pytest.fixture(scope="module")
def oof_dir(tmp_path_factory):
    """An oof output (manifest + 3 fold models) of the tiny quadrant patterns."""
    root = tmp_path_factory.mktemp("oof")
    split, _, _ = write_split(root / "data", n=240)
    (root / "params.yaml").write_text(
        yaml.safe_dump({"train": TINY_TRAIN, "oof": {"folds": 3, "epochs": 4, "min_steps": 0}})
    )
    assert (
        cli.main(
            [
                "oof",
                "--quiet",
                "--params",
                str(root / "params.yaml"),
                "--split",
                str(split),
                "--embed",
                "none",  # read only by oof.model: probe
                "--labels",
                str(root / "patches.csv"),  # none: an empty patch
                "--out",
                str(root / "oof"),
                "--metrics",
                str(root / "oof.json"),
            ]
        )
        == 0
    )
    return root / "oof"


def _search(tmp_path, oof_path, name="learned.yaml", **cfg):
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"train": TINY_TRAIN, "policy_search": {**TINY_SEARCH, **cfg}})
    )
    rc = cli.main(
        [
            "policy-search",
            "--quiet",
            "--params",
            str(tmp_path / "params.yaml"),
            "--oof",
            str(oof_path),
            "--out",
            str(tmp_path / name),
            "--metrics",
            str(tmp_path / "search.json"),
        ]
    )
    return rc, tmp_path / name


def test_learned_policy_is_a_canonical_autoaugment_policy_with_its_scores(tmp_path, oof_dir):
    rc, path = _search(tmp_path, oof_dir)
    assert rc == 0
    p = pol.load(path)
    assert p.kind == "autoaugment" and pol.dump(p) == path.read_text()
    pol.save(p, tmp_path / "again.yaml")
    assert (tmp_path / "again.yaml").read_bytes() == path.read_bytes()
    cfg = params.PolicySearch(**TINY_SEARCH)
    assert 1 <= len(p.sub_policies) <= 3 * cfg.top
    for sub in p.sub_policies:
        assert len(sub) == 2
        for op, prob, magnitude in sub:
            assert op in cfg.ops and prob == cfg.probability
            assert (magnitude in search.MAGNITUDES) if ops.has_magnitude(op) else magnitude is None
    rows = p.search["scores"]
    assert len(rows) == len(p.sub_policies) and {r["fold"] for r in rows} <= {0, 1, 2}
    assert all(r["change"] >= cfg.min_change for r in rows)
    for fold in {r["fold"] for r in rows}:  # best first within a fold
        losses = [r["loss"] for r in rows if r["fold"] == fold]
        assert losses == sorted(losses)
    metrics = json.loads((tmp_path / "search.json").read_text())
    assert metrics["sub_policies"] == len(p.sub_policies) and metrics["candidates"] == 3 * cfg.candidates
    # it drives the augment stage's draw/apply like any policy
    img = np.random.default_rng(0).integers(0, 256, (8, 8, 1), dtype=np.uint8)
    out = pol.apply(img, pol.draw(p, np.random.default_rng(1), img.shape), policy=p)
    assert out.shape == img.shape and out.dtype == np.uint8


def test_same_inputs_give_the_same_file_and_the_seed_changes_it(tmp_path, oof_dir):
    _, a = _search(tmp_path, oof_dir, "a.yaml")
    _, b = _search(tmp_path, oof_dir, "b.yaml")
    _, c = _search(tmp_path, oof_dir, "c.yaml", seed=1)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def _fold0(oof_dir):
    df, _ = dataset.read_manifest(oof_dir)
    rows = np.flatnonzero(df["fold"].to_numpy() == 0)
    return checkpoints.fold_models(oof_dir)[0], dataset.load_pixels(df.iloc[rows]), df["label_id"].to_numpy()[rows]


def test_scoring_prefers_a_small_translation_to_destructive_ops(oof_dir):
    model, x, y = _fold0(oof_dir)  # the class is the quadrant holding a bright square
    rng = np.random.default_rng(0)
    mild = search.score(model, x, y, [("TranslateX", 3), ("TranslateY", 3)], rng)  # 1 px each way
    inverted = search.score(model, x, y, [("Invert", None), ("TranslateX", 3)], rng)
    rotated = search.score(model, x, y, [("Rotate", 10), ("Rotate", 10)], rng)  # 60 degrees
    assert mild.change > 0.05
    assert mild.loss < rotated.loss < inverted.loss and mild.accuracy > inverted.accuracy
    # and the search, offered both, keeps no sub-policy with Invert (nor [Invert, Invert]: the identity)
    cfg = params.PolicySearch(ops=["TranslateX", "Invert"], candidates=24, top=2)
    top, feasible, _ = search.search_fold(model, x, y, cfg, seed=0, fold=0)
    assert len(top) == 2 and all(op == "TranslateX" for s in top for op, _ in s.sub)


def test_identity_like_candidates_are_never_drawn_or_kept(oof_dir):
    model, x, y = _fold0(oof_dir)
    space = search.effective(x, ["Identity", "Color", "Rotate", "Invert"], np.random.default_rng(0))
    assert set(space) == {"Rotate", "Invert"}  # Identity changes nothing, Color nothing on grey images
    assert 1 not in space["Rotate"] and space["Invert"] == [None]  # 3 degrees moves no pixel of 8x8
    cfg = params.PolicySearch(ops=["Identity", "Color", "Rotate"], candidates=10, top=3, min_change=0.0)
    top, _, idle = search.search_fold(model, x, y, cfg, seed=0, fold=0)
    assert idle == ["Identity", "Color"] and all(op == "Rotate" for s in top for op, _ in s.sub)
    twice = search.score(model, x, y, [("Invert", None), ("Invert", None)], np.random.default_rng(0))
    assert twice.change == 0.0 < params.PolicySearch().min_change  # the identity in disguise: below the floor
    with pytest.raises(PipelineError, match="none of .* changes the images of fold 0"):
        search.search_fold(model, x, y, cfg.model_copy(update={"ops": ["Identity", "Color"]}), seed=0, fold=0)


def test_a_floor_no_candidate_reaches_fails_naming_the_knob(tmp_path, oof_dir, capsys):
    rc, path = _search(tmp_path, oof_dir, min_change=0.99)
    assert rc == 2 and not path.exists()
    assert "lower min_change" in capsys.readouterr().err


def test_missing_fold_models_fail_clearly(tmp_path, oof_dir, capsys):
    shutil.copytree(oof_dir, tmp_path / "oof")
    shutil.rmtree(tmp_path / "oof" / artifacts.OOF_MODELS)
    rc, path = _search(tmp_path, tmp_path / "oof")
    assert rc == 2 and not path.exists()
    assert "no fold models under models/; re-run oof" in capsys.readouterr().err


def test_disabled_writes_the_identity_policy_without_reading_oof(tmp_path):
    rc, path = _search(tmp_path, tmp_path / "nowhere", enabled=False)
    assert rc == 0
    p = pol.load(path)
    assert p.sub_policies == [[("Identity", 1.0, None)]] and p.search == {"enabled": False}
    assert pol.dump(p) == path.read_text()


def test_params_op_names_follow_the_op_set():
    with pytest.raises(PipelineError, match=r"policy_search\.ops\.0: expected .*'Cutout', got 'SamplePairing'"):
        params.parse({"policy_search": {"ops": ["SamplePairing"]}})
