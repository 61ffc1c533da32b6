import gzip
import os
import typing

import numpy as np
import pytest
from badinput import pattern
from PIL import Image

from pipeline.core.errors import PipelineError
from pipeline.core.params import Ingest
from pipeline.sources import readers as sources


def test_registry_matches_the_params_choices():
    choices = typing.get_args(Ingest.model_fields["source"].annotation)
    assert set(sources.SOURCES) == set(choices)


def test_auto_shape_from_the_images(tmp_path):

    auto = Ingest(source="imagefolder", path=str(tmp_path))
    grey = [sources.Item(path=f"g{i}", pixels=np.zeros((28, 28), np.uint8)) for i in range(3)]
    assert sources.auto_shape(grey, auto)[:2] == (28, 1)
    rng = np.random.default_rng(0)
    files = []
    for i, (w, h) in enumerate([(320, 240), (200, 300), (640, 480)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        files.append(sources.Item(path=f"{i}.png", file=str(tmp_path / f"{i}.png")))
    size, channels, why = sources.auto_shape(files, auto)
    assert (size, channels) == (sources.AUTO_MAX_SIZE, 3) and "median shorter side 240" in why
    # an RGB file of grey pixels is grey; fixed values are kept
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(tmp_path / "g.png")
    flat = [sources.Item(path="g.png", file=str(tmp_path / "g.png"))] * 3
    assert sources.auto_shape(flat, auto)[:2] == (40, 1)
    assert sources.auto_shape(files, Ingest(image_size=16, channels=1))[:2] == (16, 1)
    # a median side that the models and synthesize's VAE cannot halve twice is rounded down
    odd = [sources.Item(path=f"o{i}", pixels=np.zeros((61, 70), np.uint8)) for i in range(3)]
    size, _, why = sources.auto_shape(odd, auto)
    assert size == 60 and "median shorter side 61 px, a multiple of 4" in why
    tiny = [sources.Item(path=f"t{i}", pixels=np.zeros((5, 5), np.uint8)) for i in range(3)]
    assert sources.auto_shape(tiny, auto)[0] == 8


def test_digits_are_scaled_to_0_255():
    items, classes = sources.digits(Ingest())
    assert len(items) == 1797 and classes == [str(c) for c in range(10)]
    assert items[0].path == "digits/0000" and items[0].pixels.shape == (8, 8)
    assert max(int(it.pixels.max()) for it in items) == 255
    assert {it.label for it in items} == set(classes)


# ---- IDX (mnist, fashion-mnist) --------------------------------------------------------


def _idx(data: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in data.shape)
    return header + data.astype(np.uint8).tobytes()


def write_idx_dir(directory, labels=((0, 1, 2), (3, 4)), gz=True, side=28):
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, ys in zip(("train", "t10k"), labels):
        images = np.stack([np.full((side, side), 10 * y, np.uint8) for y in ys])
        for stem, blob in (
            (f"{prefix}-images-idx3-ubyte", _idx(images, 2051)),
            (f"{prefix}-labels-idx1-ubyte", _idx(np.array(ys), 2049)),
        ):
            if gz:
                (directory / f"{stem}.gz").write_bytes(gzip.compress(blob, mtime=0))
            else:
                (directory / stem).write_bytes(blob)
    return directory


@pytest.mark.parametrize("gz", [True, False])
def test_idx_source_reads_both_splits(tmp_path, gz):
    directory = write_idx_dir(tmp_path, gz=gz)
    items, classes = sources.SOURCES["mnist"](Ingest(source="mnist", path=str(directory)))
    assert classes == [str(c) for c in range(10)]
    assert [it.path for it in items] == [
        "mnist/train/00000",
        "mnist/train/00001",
        "mnist/train/00002",
        "mnist/t10k/00000",
        "mnist/t10k/00001",
    ]
    assert [it.source_split for it in items] == ["train"] * 3 + ["test"] * 2
    assert [it.label for it in items] == ["0", "1", "2", "3", "4"]
    assert items[4].pixels.shape == (28, 28) and items[4].pixels[0, 0] == 40


def test_idx_label_out_of_range_is_quarantined(tmp_path):
    directory = write_idx_dir(tmp_path, labels=((0, 12), (1,)))
    items, _ = sources.SOURCES["mnist"](Ingest(source="mnist", path=str(directory)))
    assert items[1].reason == "unknown_label" and "12" in items[1].detail
    assert items[0].reason is None and items[2].reason is None


def test_idx_missing_directory_names_the_file(tmp_path):
    with pytest.raises(PipelineError, match=r"nope: no train-images-idx3-ubyte\[\.gz\]"):
        sources.SOURCES["mnist"](Ingest(source="mnist", path=str(tmp_path / "nope")))


def test_idx_mnist_needs_a_path():
    with pytest.raises(PipelineError, match="ingest.path: expected the folder of the mnist IDX"):
        sources.SOURCES["mnist"](Ingest(source="mnist"))


def test_idx_wrong_magic_names_the_file(tmp_path):
    directory = write_idx_dir(tmp_path, gz=False)
    labels = directory / "train-labels-idx1-ubyte"
    (directory / "train-images-idx3-ubyte").write_bytes(labels.read_bytes())  # magic 2049
    with pytest.raises(PipelineError, match=r"images-idx3-ubyte: not an IDX file with magic number 2051"):
        sources.SOURCES["mnist"](Ingest(source="mnist", path=str(directory)))


def test_idx_short_data_and_count_mismatch(tmp_path):
    directory = write_idx_dir(tmp_path / "a", gz=False)
    blob = (directory / "t10k-images-idx3-ubyte").read_bytes()
    (directory / "t10k-images-idx3-ubyte").write_bytes(blob[:-5])
    with pytest.raises(PipelineError, match=r"t10k-images-idx3-ubyte: header says \[2, 28, 28\]"):
        sources.SOURCES["mnist"](Ingest(source="mnist", path=str(directory)))
    directory = write_idx_dir(tmp_path / "b", labels=((0, 1, 2), (3, 4)), gz=False)
    (directory / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.array([3]), 2049))
    with pytest.raises(PipelineError, match="t10k has 2 images but 1 labels"):
        sources.SOURCES["mnist"](Ingest(source="mnist", path=str(directory)))


def test_idx_corrupt_gzip_names_the_file(tmp_path):
    directory = write_idx_dir(tmp_path)
    (directory / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(PipelineError, match=r"train-images-idx3-ubyte\.gz: cannot read IDX file"):
        sources.SOURCES["mnist"](Ingest(source="mnist", path=str(directory)))


# ---- image folder -----------------------------------------------------------------------


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pattern(0)).save(path)


def test_imagefolder_lists_in_a_stable_order_without_decoding(tmp_path):
    for rel in ("b/2.png", "b/1.png", "a/z/3.png", "a/0.png"):
        _png(tmp_path / rel)
    (tmp_path / "a" / "text.png").write_text("not decoded here")
    items, classes = sources.imagefolder(Ingest(source="imagefolder", path=str(tmp_path)))
    assert classes == ["a", "b"]
    assert [(it.path, it.label) for it in items] == [
        ("a/0.png", "a"),
        ("a/text.png", "a"),
        ("a/z/3.png", "a"),
        ("b/1.png", "b"),
        ("b/2.png", "b"),
    ]
    assert all(it.reason is None and os.path.isfile(it.file) for it in items)


def test_imagefolder_listing_reasons(tmp_path):
    _png(tmp_path / "a" / "0.png")
    _png(tmp_path / "outside" / "x.png")
    root = tmp_path / "root"
    _png(root / "a" / "ok.png")
    _png(root / "stray.png")
    os.symlink(tmp_path / "outside" / "x.png", root / "a" / "out.png")
    os.symlink("ok.png", root / "a" / "in.png")
    os.symlink("gone.png", root / "a" / "broken.png")
    os.symlink("a", root / "alias")
    os.mkfifo(root / "a" / "fifo.png")  # named as an image: refused (without an image extension: a sidecar)
    os.mkdir(os.fsencode(root) + b"/\xe9t\xe9")
    with open(os.fsencode(root) + b"/a/\xff.png", "wb") as f:
        f.write(b"x")
    items, classes = sources.imagefolder(Ingest(source="imagefolder", path=str(root)))
    assert classes == ["a"]
    assert {it.path: it.reason for it in items} == {
        "alias": "linked_dir",
        "\\xe9t\\xe9": "non_utf8_name",
        "stray.png": "not_in_class_folder",
        "a/broken.png": "missing_file",
        "a/fifo.png": "not_a_file",
        "a/in.png": None,
        "a/ok.png": None,
        "a/out.png": "outside_root",
        "a/\\xff.png": "non_utf8_name",
    }
    assert all(it.detail for it in items if it.reason)


def test_imagefolder_path_errors(tmp_path):
    with pytest.raises(PipelineError, match="ingest.path: expected an image-folder root"):
        sources.imagefolder(Ingest(source="imagefolder"))
    with pytest.raises(PipelineError, match="no such file or directory"):
        sources.imagefolder(Ingest(source="imagefolder", path=str(tmp_path / "nope")))
    (tmp_path / "f.png").write_bytes(b"")
    with pytest.raises(PipelineError, match="not a directory"):
        sources.imagefolder(Ingest(source="imagefolder", path=str(tmp_path / "f.png")))


# ---- CSV --------------------------------------------------------------------------------


def test_csv_rows_labels_and_groups(tmp_path):
    _png(tmp_path / "img" / "a.png")
    _png(tmp_path / "img" / "b.png")
    (tmp_path / "l.csv").write_text(
        "path,label,group\nimg/a.png, y ,g1\nimg/b.png,x,\nimg/a.png,,g2\n,x,\n../l.csv,x,\nimg,x,\nimg/c.png,x,\n"
    )
    items, classes = sources.csv(Ingest(source="csv", path=str(tmp_path / "l.csv")))
    assert classes == ["x", "y"]
    assert [(it.path, it.label, it.group, it.reason) for it in items] == [
        ("img/a.png", "y", "g1", None),
        ("img/b.png", "x", None, None),
        ("img/a.png", None, "g2", None),  # an empty label: unlabeled
        ("<line 5>", None, None, "missing_path"),
        ("../l.csv", None, None, "outside_root"),
        ("img", None, None, "not_a_file"),
        ("img/c.png", None, None, "missing_file"),
    ]


def test_csv_without_group_column(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "l.csv").write_text("label,path\nx,a.png\n")
    items, _ = sources.csv(Ingest(source="csv", path=str(tmp_path / "l.csv")))
    assert items[0].group is None and items[0].label == "x"


@pytest.mark.parametrize(
    "text, match",
    [
        ("file,label\na.png,x\n", "expected columns path,label"),
        ("", "cannot read as CSV"),
    ],
)
def test_csv_errors(tmp_path, text, match):
    (tmp_path / "l.csv").write_text(text)
    with pytest.raises(PipelineError, match=match) as e:
        sources.csv(Ingest(source="csv", path=str(tmp_path / "l.csv")))
    assert "\n" not in str(e.value)
