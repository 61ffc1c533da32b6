import numpy as np
import pandas as pd
import pytest

from pipeline.core.params import Split
from pipeline.stages import split


@pytest.fixture(autouse=True)
def _store(tmp_path, monkeypatch):
    """Distinct random 8x8 images behind every manifest these tests build."""
    path = tmp_path / "images.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (400, 8, 8, 1), dtype=np.uint8))
    monkeypatch.setattr(_df, "store", str(path), raising=False)


def _df(n_per_class=100, classes=("a", "b", "c"), group=None, source_split=None):
    rows = [
        {"sample_id": f"{c}{i}", "label": c, "group": None, "source_split": None}
        for c in classes
        for i in range(n_per_class)
    ]
    df = pd.DataFrame(rows)
    df["store"], df["row"] = _df.store, np.arange(len(df))
    if group is not None:
        df["group"] = group(df)
    if source_split is not None:
        df["source_split"] = source_split(df)
    return df


def test_stratified_fractions_are_exact_per_class():
    out, m = split.partition(_df(), Split(fractions={"train": 0.7, "val": 0.1, "test": 0.2}), seed=0)
    counts = out.groupby(["label", "split"]).size().unstack()
    assert (counts["train"] == 70).all() and (counts["val"] == 10).all() and (counts["test"] == 20).all()
    assert m["in"] == m["train"] + m["val"] + m["test"] == m["kept"] == 300
    assert m["removed"] == 0 and m["cross_split_exact"] == m["cross_split_near_duplicates"] == 0


def test_deterministic_and_seed_dependent():
    cfg = Split()
    a, _ = split.partition(_df(), cfg, seed=0)
    b, _ = split.partition(_df(), cfg, seed=0)
    c, _ = split.partition(_df(), cfg, seed=1)
    assert a["split"].equals(b["split"])
    assert not a["split"].equals(c["split"])


def test_adding_a_sample_moves_few_others():
    cfg = Split()
    a, _ = split.partition(_df(), cfg, seed=0)
    extra = pd.concat(
        [
            _df(),
            pd.DataFrame(
                [
                    {
                        "sample_id": "new",
                        "label": "a",
                        "group": None,
                        "source_split": None,
                        "store": _df.store,
                        "row": 300,
                    }
                ]
            ),
        ],
        ignore_index=True,
    )
    b, _ = split.partition(extra, cfg, seed=0)
    moved = (a["split"].to_numpy() != b["split"].to_numpy()[: len(a)]).sum()
    assert moved <= 2  # at most one per boundary


def test_groups_never_cross_splits():
    out, _ = split.partition(_df(group=lambda d: [f"g{i // 5}" for i in range(len(d))]), Split(), seed=0)
    assert (out.groupby("group")["split"].nunique() == 1).all()
    assert out["cluster_id"].str.startswith("g:").all()


def test_source_test_set_is_kept_and_the_rest_split():
    df = _df(source_split=lambda d: np.where(np.arange(len(d)) % 4 == 0, "test", "train"))
    out, m = split.partition(df, Split(fractions={"train": 0.6, "val": 0.2, "test": 0.2}), seed=0)
    assert (out.loc[df["source_split"] == "test", "split"] == "test").all()
    assert (out.loc[df["source_split"] != "test", "split"] != "test").all()
    assert m["source_test_kept"] and m["test"] == 75
    assert m["val"] == 57  # 25% of the 225 non-test samples, by class: round(75 * 0.25) = 19 each


def test_source_split_ignored_when_asked():
    df = _df(source_split=lambda d: np.where(np.arange(len(d)) % 4 == 0, "test", "train"))
    out, m = split.partition(df, Split(respect_source_split=False), seed=0)
    assert not m["source_test_kept"] and m["test"] == 60


def _with_pool(df: pd.DataFrame, every: int = 3) -> pd.DataFrame:
    """Every `every`-th sample unlabeled (the pool), with pixel hashes for the exact-duplicate rule."""
    from pipeline.core import dataset

    px = np.load(_df.store)
    df["pixel_sha256"] = [dataset.pixel_hash(px[r]) for r in df["row"]]
    df.loc[np.arange(len(df)) % every == 0, "label"] = None
    return df


def test_the_pool_never_enters_val_or_test_and_labeled_fractions_hold():
    out, m = split.partition(_with_pool(_df()), Split(fractions={"train": 0.7, "val": 0.1, "test": 0.2}), seed=0)
    pool = out["label"].isna()
    assert (out.loc[pool, "split"] == "unlabeled").all() and (out.loc[~pool, "split"] != "unlabeled").all()
    assert m["unlabeled"] == pool.sum() == 100 and m["in"] == m["kept"] + m["unlabeled"] + m["removed"]
    sizes = out.loc[~pool].groupby("split").size()  # 200 labeled: exact per class up to one at each cut
    assert sizes.sum() == 200 and abs(sizes["train"] - 140) <= 3 and abs(sizes["test"] - 40) <= 3


@pytest.mark.parametrize("held", ["test", "val"])
def test_a_pool_copy_of_a_held_out_image_is_removed_under_its_rule(held):
    cfg = Split(fractions={"train": 0.7, "val": 0.1, "test": 0.2})
    base = _with_pool(_df())
    first, _ = split.partition(base, cfg, seed=0)
    original = first[first["split"] == held].iloc[0]
    copy = base[base["sample_id"] == original["sample_id"]].assign(sample_id="zz-copy", label=None)
    out, m = split.partition(pd.concat([base, copy], ignore_index=True), cfg, seed=0)
    row = out.set_index("sample_id").loc["zz-copy"]
    assert out.set_index("sample_id").loc[original["sample_id"], "split"] == held
    assert (row["split"], row["removed_reason"], row["dup_of"]) == (
        "removed",
        f"pool_exact_duplicate_of_{held}",
        original["sample_id"],
    )
    assert m["removed_by_rule"] == {f"pool_exact_duplicate_of_{held}": 1}
