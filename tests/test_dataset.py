import numpy as np
import pandas as pd
import pytest

from pipeline.core import dataset
from pipeline.core.errors import PipelineError


def _write(tmp_path, n=10, shard_size=4):
    out = tmp_path / "ds"
    writer = dataset.ShardWriter(out / "images", shard_size=shard_size)
    rows = []
    for i in range(n):
        px = np.full((3, 3, 1), i, np.uint8)
        store, row = writer.add(px)
        rows.append({"sample_id": f"s{i}", "store": store, "row": row})
    writer.close()
    dataset.write_manifest(pd.DataFrame(rows), out / dataset.MANIFEST, ["a", "b"])
    return out


def test_round_trip_and_shards(tmp_path):
    out = _write(tmp_path)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["00000.npy", "00001.npy", "00002.npy"]
    df, classes = dataset.read_manifest(out)
    assert classes == ["a", "b"]
    px = dataset.load_pixels(df.iloc[[9, 0, 5]])
    assert px.shape == (3, 3, 3, 1) and list(px[:, 0, 0, 0]) == [9, 0, 5]


def test_store_paths_survive_moving_the_folder(tmp_path):
    out = _write(tmp_path)
    moved = tmp_path / "elsewhere" / "ds"
    moved.parent.mkdir()
    out.rename(moved)
    df, _ = dataset.read_manifest(moved)
    assert dataset.load_pixels(df)[7, 0, 0, 0] == 7


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="no manifest"):
        dataset.read_manifest(tmp_path)


def test_staged_dir_keeps_old_output_when_the_block_fails(tmp_path):
    out = tmp_path / "out"
    with dataset.staged_dir(out) as tmp:
        (tmp / "f").write_text("old")
    with pytest.raises(RuntimeError):
        with dataset.staged_dir(out) as tmp:
            (tmp / "f").write_text("new")
            raise RuntimeError("killed")
    assert (out / "f").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_ids_and_seeds_are_stable_and_distinct():
    assert dataset.sample_id("a/b.png") == dataset.sample_id("a/b.png") != dataset.sample_id("a/c.png")
    assert dataset.sample_seed(0, "x") != dataset.sample_seed(1, "x")
    assert dataset.sample_seed(0, "x") == dataset.sample_seed(0, "x")
