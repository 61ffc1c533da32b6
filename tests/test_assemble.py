import pandas as pd
import pytest

from pipeline.core.errors import PipelineError
from pipeline.stages import assemble


def _split():
    return pd.DataFrame(
        {
            "sample_id": ["t1", "t2", "v1", "x1", "u1"],
            "label": ["a", "b", "a", "b", None],
            "split": ["train", "train", "val", "test", "unlabeled"],
            "origin": "real",
            "parent_id": None,
        }
    )


def _derived(**overrides):
    row = {"sample_id": "d1", "label": "a", "split": "train", "origin": "augmented", "parent_id": "t1"}
    row.update(overrides)
    return pd.DataFrame([row])


def test_real_train_only_with_weight():
    out, m = assemble.combine(_split(), {}, real_weight=2.0)
    assert list(out["sample_id"]) == ["t1", "t2"] and (out["weight"] == 2.0).all()
    assert m["total"] == 2


def test_valid_derived_samples_are_admitted():
    out, m = assemble.combine(_split(), {"aug": _derived()}, 1.0)
    assert list(out["sample_id"]) == ["t1", "t2", "d1"] and m["by_origin"] == {"augmented": 1, "real": 2}
    synthetic = _derived(sample_id="s1", origin="synthetic", parent_id=None)
    assert len(assemble.combine(_split(), {"syn": synthetic}, 1.0)[0]) == 3


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"parent_id": "v1"}, "derive from a sample outside train"),
        ({"parent_id": "x1"}, "derive from a sample outside train"),
        ({"split": "val"}, "not in the train split"),
        ({"parent_id": "zzz"}, "not a real sample"),
        ({"sample_id": "t2"}, "reuse an existing sample_id"),
        ({"origin": "real"}, "origin outside"),
        ({"parent_id": None}, "name no parent_id"),
        ({"origin": "synthetic"}, "synthetic but name a parent"),
    ],
)
def test_lineage_violations_are_refused_by_name(overrides, match):
    with pytest.raises(PipelineError, match=match):
        assemble.combine(_split(), {"aug": _derived(**overrides)}, 1.0)


def test_pseudo_labels_must_come_from_the_pool_and_the_pool_itself_never_trains():
    pseudo = _derived(sample_id="p1", origin="pseudo", parent_id="u1")
    out, m = assemble.combine(_split(), {"pseudo": pseudo}, 1.0)
    assert list(out["sample_id"]) == ["t1", "t2", "p1"] and m["by_origin"] == {"pseudo": 1, "real": 2}
    for parent in ("t1", "v1", "x1"):
        with pytest.raises(PipelineError, match="pseudo-labels of a sample outside the unlabeled pool"):
            assemble.combine(_split(), {"pseudo": _derived(origin="pseudo", parent_id=parent)}, 1.0)
    with pytest.raises(PipelineError, match="derive from a sample outside train"):
        assemble.combine(_split(), {"aug": _derived(parent_id="u1")}, 1.0)  # an augmented copy of an unlabeled image


def test_missing_or_malformed_mine_weights_fail_naming_the_file(tmp_path):
    from pipeline.core import artifacts

    with pytest.raises(PipelineError, match=r"weights.parquet: no mine weights \(has the mine stage run\?\)"):
        artifacts.read_mine_weights(tmp_path)
    pd.DataFrame({"sample_id": ["a"], "w": [1.0]}).to_parquet(tmp_path / artifacts.MINE_WEIGHTS)
    with pytest.raises(PipelineError, match="missing column.s. weight; re-run mine"):
        artifacts.read_mine_weights(tmp_path)
    pd.DataFrame({"sample_id": ["a"], "weight": [float("nan")]}).to_parquet(tmp_path / artifacts.MINE_WEIGHTS)
    with pytest.raises(PipelineError, match="finite and non-negative"):
        artifacts.read_mine_weights(tmp_path)


def test_assemble_use_leaves_out_an_origin_and_counts_what_it_left():
    from pipeline.core import params

    derived = {
        "aug": _derived(),
        "adv": _derived(sample_id="a1", origin="adversarial"),
        "pseudo": _derived(sample_id="p1", origin="pseudo", parent_id="u1"),
    }
    default = params.parse({})  # pseudo-labels only, by the ablation's evidence
    out, m = assemble.run(default, _split(), derived)
    assert list(out["sample_id"]) == ["t1", "t2", "p1"]
    assert m["not_used"] == {"adversarial": 1, "augmented": 1} and m["use"]["pseudo"] is True
    every = params.parse({"assemble": {"use": {"augmented": True, "adversarial": True}}})
    out, m = assemble.run(every, _split(), derived)
    assert list(out["sample_id"]) == ["t1", "t2", "d1", "a1", "p1"] and m["not_used"] == {}
    with pytest.raises(PipelineError, match="assemble.use.augmnted"):
        params.parse({"assemble": {"use": {"augmnted": True}}})
