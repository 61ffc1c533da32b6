"""The manifest schema: derived rows get their lineage one way, readers name missing columns."""

import pandas as pd
import pytest

from pipeline.core import dataset, schema
from pipeline.core.errors import PipelineError


def _parents() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": ["p0", "p1"],
            "path": ["a.png", "b.png"],
            "label": ["cat", "dog"],
            "label_id": [0, 1],
            "group": ["g", None],
            "split": ["train", "train"],
            "origin": [schema.REAL] * 2,
            "cluster_id": [3, 4],  # not inherited
        }
    )


def test_derived_rows_copy_the_lineage_from_their_parents():
    parents = _parents()
    rep = parents.loc[parents.index.repeat(2)]
    storage = {"pixel_sha256": list("wxyz"), "store": ["s"] * 4, "row": [0, 1, 2, 3]}
    df = schema.derived_rows(rep, schema.AUGMENTED, ["c0", "c1", "c2", "c3"], {"policy": "x"}, 0.5, storage)
    assert list(df.columns) == schema.columns("policy")
    assert list(df["parent_id"]) == ["p0", "p0", "p1", "p1"] and set(df["origin"]) == {schema.AUGMENTED}
    assert list(df["label"]) == ["cat", "cat", "dog", "dog"] and list(df["group"].isna()) == [False, False, True, True]
    assert (df["weight"] == 0.5).all() and list(df["row"]) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="2 parent rows for 4 derived samples"):
        schema.derived_rows(parents, schema.AUGMENTED, ["c0", "c1", "c2", "c3"], {}, 1.0, storage)


def test_derived_rows_without_parents_are_synthetic_train_samples():
    df = schema.derived_rows(
        None, schema.SYNTHETIC, ["s0"], {"generator": "vae"}, 1.0, {"pixel_sha256": ["h"]},
        path=["synthetic/vae/cat/00000"], label=["cat"], label_id=[0],
    )  # fmt: skip
    row = df.iloc[0]
    assert (row["split"], row["parent_id"], row["group"], row["origin"]) == ("train", None, None, "synthetic")


def test_a_reader_names_the_missing_columns(tmp_path):
    dataset.write_manifest(_parents().drop(columns=["label_id"]), tmp_path / dataset.MANIFEST, ["cat", "dog"])
    with pytest.raises(PipelineError, match=r"not a samples manifest: no column\(s\) label_id, parent_id, pixel_sha"):
        schema.read(tmp_path, "samples")
