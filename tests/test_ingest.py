import json
import multiprocessing
import os
import warnings

import badinput
import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.__main__ import main
from pipeline.core import console, dataset, params
from pipeline.core.errors import PipelineError
from pipeline.quality import image as quality
from pipeline.sources.readers import FASHION_MNIST_DIR
from pipeline.stages import ingest as stage
from pipeline.stages.ingest import QUARANTINE

SIDE = badinput.SIDE


def ingest(tmp_path, name="run", quiet=True, **section):
    """Run `python -m pipeline ingest` in-process; return (exit code, metrics, output folder)."""
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump({"ingest": section}))
    out, metrics = tmp_path / name, tmp_path / f"{name}.json"
    rc = main(["ingest", "--params", str(p), "--out", str(out), "--metrics", str(metrics), *["--quiet"] * quiet])
    return rc, (json.loads(metrics.read_text()) if metrics.exists() else None), out


def folder_params(root, **kw):
    return {
        "source": "imagefolder",
        "path": str(root),
        "image_size": SIDE,
        "classes": badinput.CLASSES,
        "max_bad_fraction": 1.0,
        **kw,
    }


def pixels(out, path):
    df, _ = dataset.read_manifest(out)
    return dataset.load_pixels(df[df["path"] == path])[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("corpus")
    cases = badinput.write_corpus(tmp / "root")
    rc, metrics, out = ingest(tmp, **folder_params(tmp / "root", shard_size=8))
    assert rc == 0
    return tmp, cases, metrics, out


# ---- the bad-input corpus ---------------------------------------------------------------


def test_corpus_covers_enough_kinds(corpus):
    _, cases, _, _ = corpus
    assert len(badinput.KINDS) >= 15
    assert len({c.reason for c in cases if c.reason}) >= 12
    assert sum(c.reason is None for c in cases) >= 10


def test_counts_add_up_and_match_the_expected_reasons(corpus):
    _, cases, metrics, _ = corpus
    assert metrics["in"] == metrics["kept"] + metrics["quarantined"] == len(cases)
    assert metrics["by_reason"] == badinput.expected_counts(cases)
    assert metrics["kept"] == sum(c.reason is None for c in cases)
    assert metrics["empty_classes"] == ["empty"] and metrics["per_class"]["empty"] == 0


def test_build_corpus_returns_the_reason_counts(tmp_path):
    counts = badinput.build_corpus(tmp_path / "root")
    assert counts == badinput.expected_counts(badinput.write_corpus(tmp_path / "again"))
    assert counts["truncated"] == 3 and counts["too_large"] == 3 and "duplicate_id" not in counts


@pytest.mark.parametrize("kind", list(badinput.KINDS))
def test_each_kind_lands_where_expected(corpus, kind):
    _, cases, _, out = corpus
    quarantine = pd.read_csv(out / QUARANTINE, keep_default_na=False)
    kept = set(dataset.read_manifest(out)[0]["path"])
    reasons = dict(zip(quarantine["path"], quarantine["reason"]))
    for case in (c for c in cases if c.kind == kind):
        if case.reason is None:
            assert case.path in kept and case.path not in reasons, case
        else:
            assert reasons.get(case.path) == case.reason and case.path not in kept, case


def test_quarantine_rows_match_exactly(corpus):
    _, cases, _, out = corpus
    quarantine = pd.read_csv(out / QUARANTINE, keep_default_na=False)
    assert list(quarantine.columns) == ["path", "reason", "detail"]
    assert sorted(zip(quarantine["path"], quarantine["reason"])) == sorted(
        (c.path, c.reason) for c in cases if c.reason
    )
    assert (quarantine["detail"] != "").all()
    assert not quarantine["detail"].str.contains("Traceback|\n").any()


def test_kept_pixels_follow_the_conventions(corpus):
    _, _, _, out = corpus
    g16 = pixels(out, badinput.GRAY16)[..., 0]
    assert (g16[: SIDE // 2] == 255).all() and (g16[SIDE // 2 :] == 128).all()  # 65535, 32896
    rgba = pixels(out, badinput.RGBA)[..., 0]  # light content (200): onto black (ingest.background auto)
    assert (rgba[: SIDE // 2] == 200).all() and (rgba[SIDE // 2 :] == 0).all()
    la = pixels(out, badinput.GRAY_ALPHA)[..., 0]
    assert (la[:, : SIDE // 2] == 200).all() and (la[:, SIDE // 2 :] == 100).all()
    pal = pixels(out, badinput.PALETTE)[..., 0]
    assert (pal[:, : SIDE // 2] == 255).all() and (pal[:, SIDE // 2 :] == 100).all()  # dark content: onto white
    assert (pixels(out, badinput.GIF) == 255).all()  # the first frame
    assert np.abs(pixels(out, badinput.LAB).astype(int) - 119).max() <= 2
    assert abs(int(pixels(out, badinput.CMYK)[0, 0, 0]) - 76) <= 3  # luma of pure red


def test_exif_orientation_was_applied(corpus):
    _, _, _, out = corpus
    got = pixels(out, badinput.EXIF)[..., 0].astype(int)
    want = badinput.asymmetric().astype(int)
    assert np.abs(got - want).max() <= 12
    for wrong in (np.rot90(want, 1), np.rot90(want, 2), np.rot90(want, -1), want.T):
        assert np.abs(got - wrong).max() > 100


def test_duplicate_files_are_both_kept_with_the_same_hash(corpus):
    _, _, _, out = corpus
    df, _ = dataset.read_manifest(out)
    dup = df[df["path"].isin(badinput.DUPLICATES)]
    assert len(dup) == 2 and dup["pixel_sha256"].nunique() == 1 and dup["sample_id"].nunique() == 2
    assert df["sample_id"].is_unique


def test_manifest_columns_and_pixel_shapes(corpus):
    _, _, metrics, out = corpus
    df, classes = dataset.read_manifest(out)
    assert classes == badinput.CLASSES
    assert list(df.columns) == [
        "sample_id",
        "path",
        "label",
        "label_id",
        "group",
        "origin",
        "parent_id",
        "source_split",
        "hidden_label",
        "background",
        "pixel_sha256",
        "store",
        "row",
        *(f"quality_{p}" for p in quality.PROPERTIES),
    ]
    assert (df["label_id"] == df["label"].map(classes.index)).all()
    assert df["quality_width"].min() >= 1 and df["quality_grey"].dtype == bool
    px = dataset.load_pixels(df)
    assert px.shape == (metrics["kept"], SIDE, SIDE, 1) and px.dtype == np.uint8
    assert [dataset.pixel_hash(p) for p in px] == list(df["pixel_sha256"])
    assert len(list((out / "images").glob("*.npy"))) == -(-metrics["kept"] // 8)


def test_rgb_and_resized_output(corpus, tmp_path):
    tmp, cases, metrics1, _ = corpus
    rc, metrics, out = ingest(tmp_path, **folder_params(tmp / "root", channels=3, image_size=12))
    assert rc == 0 and metrics["by_reason"] == metrics1["by_reason"]
    px = dataset.load_pixels(dataset.read_manifest(out)[0])
    assert px.shape == (metrics["kept"], 12, 12, 3)
    red = pixels(out, badinput.CMYK).astype(int)
    assert np.abs(red - [255, 0, 0]).max() <= 3
    grey = pixels(out, badinput.GRAY16)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_without_a_class_list(corpus, tmp_path):
    tmp, _, _, _ = corpus
    rc, metrics, out = ingest(tmp_path, **folder_params(tmp / "root", classes=None))
    _, classes = dataset.read_manifest(out)
    assert rc == 0 and classes == ["cat", "dog", "zebra"] and metrics["empty_classes"] == ["empty"]
    assert "unknown_label" not in metrics["by_reason"] and metrics["per_class"]["zebra"] == 2


def test_too_many_bad_items_exit_2_with_one_line(corpus, tmp_path, capsys):
    tmp, _, _, _ = corpus
    rc, metrics, out = ingest(tmp_path, **folder_params(tmp / "root", max_bad_fraction=0.0))
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("pipeline ingest: error:")]
    assert len(lines) == 1 and str(out / QUARANTINE) in lines[0] and "max_bad_fraction" in lines[0]
    assert (out / QUARANTINE).exists() and metrics["quarantined"] > 0  # outputs stay inspectable


def test_nothing_usable_is_an_error(tmp_path, capsys):
    (tmp_path / "root" / "a").mkdir(parents=True)
    (tmp_path / "root" / "a" / "x.png").write_text("no")
    rc, _, _ = ingest(tmp_path, source="imagefolder", path=str(tmp_path / "root"), max_bad_fraction=1.0)
    assert rc == 2 and "no usable image" in capsys.readouterr().err


def test_pillow_bomb_warning_is_neither_shown_nor_fatal(corpus, tmp_path):
    tmp, _, _, _ = corpus
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning would now raise, in the serial decode path
        rc, metrics, _ = ingest(tmp_path, **folder_params(tmp / "root", workers=1))
    assert rc == 0 and metrics["by_reason"]["too_large"] == 3


def test_an_error_mid_loop_leaves_no_worker_behind(corpus, tmp_path, monkeypatch):
    tmp, _, _, _ = corpus
    calls = []

    def failing_sample_id(*parts):
        calls.append(parts)
        if len(calls) == 5:
            raise RuntimeError("boom")
        return real_sample_id(*parts)

    real_sample_id = dataset.sample_id
    monkeypatch.setattr(dataset, "sample_id", failing_sample_id)
    # with the bar on, as in a normal run (a disabled tqdm happens to close what it wraps)
    monkeypatch.setattr(console, "_quiet", False)
    monkeypatch.setenv("PIPELINE_QUIET", "0")
    p = params.parse({"ingest": folder_params(tmp / "root", workers=2)})
    with pytest.raises(RuntimeError, match="boom"):
        try:
            stage.write(p, tmp_path / "out")
        finally:  # checked while the traceback (which holds run's frame) is alive
            assert multiprocessing.active_children() == []


# ---- determinism ------------------------------------------------------------------------


def _files(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_two_ingests_are_byte_identical(corpus, tmp_path):
    tmp, _, _, first = corpus
    _, _, second = ingest(tmp_path, **folder_params(tmp / "root", shard_size=8))
    a, b = _files(first), _files(second)
    assert set(a) >= {"manifest.parquet", QUARANTINE, "images/00000.npy"}
    assert a == b


def test_worker_count_does_not_change_the_output(corpus, tmp_path):
    tmp, _, _, _ = corpus
    _, _, one = ingest(tmp_path, "one", **folder_params(tmp / "root", shard_size=8, workers=1))
    _, _, two = ingest(tmp_path, "two", **folder_params(tmp / "root", shard_size=8, workers=2))
    assert _files(one) == _files(two)


# ---- the CSV corpus ---------------------------------------------------------------------


def test_csv_corpus(tmp_path):
    cases = badinput.write_csv_corpus(tmp_path / "c")
    rc, metrics, out = ingest(
        tmp_path, source="csv", path=str(tmp_path / "c" / badinput.CSV_NAME), image_size=SIDE, max_bad_fraction=1.0
    )
    assert rc == 0 and metrics["in"] == metrics["kept"] + metrics["quarantined"] == len(cases)
    assert metrics["by_reason"] == badinput.expected_counts(cases)
    quarantine = pd.read_csv(out / QUARANTINE, keep_default_na=False)
    assert sorted(zip(quarantine["path"], quarantine["reason"])) == sorted(
        (c.path, c.reason) for c in cases if c.reason
    )
    df, classes = dataset.read_manifest(out)
    assert classes == ["a", "b"]
    groups = {p: None if pd.isna(g) else g for p, g in zip(df["path"], df["group"])}
    assert groups == {
        "img/a0.png": "g1",
        "img/a1.png": "g1",
        "img/b0.png": "g2",
        "img/b1.png": None,
        "img/b2.png": "g2",
        "img/u0.png": "g4",
    }
    labels = dict(zip(df["path"], df["label"]))
    assert labels["img/b2.png"] == "b" and pd.isna(labels["img/u0.png"])
    assert metrics["unlabeled"] == 1 and metrics["per_class"] == {"a": 2, "b": 3}


# ---- bundled and IDX sources ------------------------------------------------------------


def test_digits(tmp_path):
    rc, metrics, out = ingest(tmp_path, source="digits")
    assert rc == 0 and metrics["in"] == metrics["kept"] == 1797 and metrics["quarantined"] == 0
    assert metrics["classes"] == 10 and metrics["image_size"] == 8
    df, classes = dataset.read_manifest(out)
    assert classes == [str(c) for c in range(10)] and df["source_split"].isna().all()
    assert dataset.load_pixels(df).shape == (1797, 8, 8, 1)


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR), reason=f"Fashion-MNIST not installed at {FASHION_MNIST_DIR}")
def test_fashion_mnist(tmp_path):
    rc, metrics, out = ingest(tmp_path, source="fashion-mnist")
    assert rc == 0 and metrics["in"] == metrics["kept"] == 70000 and metrics["by_reason"] == {}
    assert metrics["classes"] == 10 and metrics["image_size"] == 28
    df, _ = dataset.read_manifest(out)
    assert df["source_split"].value_counts().to_dict() == {"train": 60000, "test": 10000}
    assert dataset.load_pixels(df.iloc[[0, 69999]]).shape == (2, 28, 28, 1)


def test_idx_errors_exit_2_naming_the_file(tmp_path, capsys):
    rc, _, _ = ingest(tmp_path, "missing", source="mnist", path=str(tmp_path / "nope"))
    err = capsys.readouterr().err
    assert rc == 2 and "nope: no train-images-idx3-ubyte" in err and len(err.splitlines()) == 1
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01" + bytes(8))
    rc, _, _ = ingest(tmp_path, "magic", source="mnist", path=str(bad))
    err = capsys.readouterr().err
    assert rc == 2 and "train-images-idx3-ubyte: not an IDX file with magic number 2051" in err
    assert "Traceback" not in err


def test_idx_errors_raise_pipeline_error(tmp_path):
    with pytest.raises(PipelineError, match="nope"):
        stage.write(params.parse({"ingest": {"source": "mnist", "path": str(tmp_path / "nope")}}), tmp_path / "out")


# ---- params -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "section, match",
    [
        ({"sorce": "x"}, r"ingest\.sorce: unknown key"),
        ({"channels": 2}, r"ingest\.channels: expected .*got 2"),
        ({"max_bad_fraction": 1.5}, r"ingest\.max_bad_fraction: expected .*got 1\.5"),
        ({"image_size": 2}, r"ingest\.image_size: expected .*got 2"),
    ],
)
def test_bad_ingest_params_fail_with_one_line_naming_the_key(section, match):
    with pytest.raises(PipelineError, match=match) as e:
        params.parse({"ingest": section})
    assert "\n" not in str(e.value)


# ---- folders users bring: one line for each mistake, colour kept ----------------------------


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [ln for ln in err if ln.startswith("pipeline ingest: error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err)
    return errors[0]


def test_an_empty_folder_says_no_images_found(tmp_path, capsys):
    (tmp_path / "root" / "cats").mkdir(parents=True)
    rc, _, _ = ingest(tmp_path, source="imagefolder", path=str(tmp_path / "root"))
    assert rc == 2 and f"no images found under {tmp_path / 'root'}" in _one_line(capsys)


def test_a_folder_of_unreadable_files_names_the_quarantine(tmp_path, capsys):
    for c in ("a", "b"):
        (tmp_path / "root" / c).mkdir(parents=True)
        (tmp_path / "root" / c / "x.png").write_text("not a png")
    rc, metrics, out = ingest(tmp_path, source="imagefolder", path=str(tmp_path / "root"))
    line = _one_line(capsys)
    assert rc == 2 and metrics["quarantined"] == 2 and "all 2 quarantined" in line and str(out / QUARANTINE) in line


def test_a_single_class_is_refused_before_any_training(tmp_path, capsys):
    import corpus as odd

    root = odd.make("single_class", tmp_path)
    rc, metrics, _ = ingest(tmp_path, source="imagefolder", path=str(root))
    assert rc == 2 and metrics["classes"] == 1
    assert "1 class with usable images (red_circle (30 images)): a classifier needs at least 2" in _one_line(capsys)


def test_colour_and_size_are_chosen_from_the_images_and_reported(tmp_path):
    import corpus as odd

    rgb = odd.make("rgb_3x40", tmp_path)
    rc, metrics, out = ingest(tmp_path, source="imagefolder", path=str(rgb))
    assert rc == 0 and metrics["channels"] == 3 and metrics["image_size"] == 64
    assert dataset.load_pixels(dataset.read_manifest(out)[0]).shape[1:] == (64, 64, 3)
    grey = odd.make("grey_4x30", tmp_path)
    rc, metrics, _ = ingest(tmp_path, name="grey", source="imagefolder", path=str(grey))
    assert rc == 0 and metrics["channels"] == 1 and metrics["image_size"] == 40  # median of 32 and 48
    rc, metrics, _ = ingest(tmp_path, name="fixed", source="imagefolder", path=str(rgb), channels=1, image_size=16)
    assert rc == 0 and (metrics["channels"], metrics["image_size"]) == (1, 16)


def _png(path, value=0, size=12, mode="RGB"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), value).save(path)


def test_sidecar_files_are_skipped_and_counted_by_extension_not_quarantined(tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="pipeline")
    root = tmp_path / "root"
    for c in ("cat", "dog"):
        for i in range(3):
            _png(root / c / f"{i}.png", i * 40)
            (root / c / f"{i}.txt").write_text("a description")
        (root / c / "0.ogg").write_bytes(b"OggS")
    (root / "README").write_text("no extension, at the root")
    (root / "cat" / "info.DAT").write_bytes(b"\0")
    (root / "dog" / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    (root / "dog" / "broken.png").write_text("not a png")  # an image by name: quarantined, as before
    # 2 bad of 8 images pass max_bad_fraction 0.3; 12 of 18 would not, were the sidecars counted as bad
    rc, metrics, out = ingest(tmp_path, quiet=False, source="imagefolder", path=str(root), max_bad_fraction=0.3)
    assert rc == 0, capsys.readouterr().err
    assert metrics["kept"] == 6 and metrics["in"] == 8 and metrics["quarantined"] == 2
    assert metrics["by_reason"] == {"not_an_image": 1, "vector_image": 1}
    assert metrics["skipped"] == 10
    assert metrics["skipped_by_extension"] == {".txt": 6, ".ogg": 2, "(no extension)": 1, ".dat": 1}
    quarantine = pd.read_csv(out / QUARANTINE)
    svg = quarantine[quarantine["path"] == "dog/logo.svg"]
    assert svg["reason"].tolist() == ["vector_image"] and "rsvg-convert" in svg["detail"].iloc[0]
    assert "10 files beside the images skipped" in caplog.text


def test_a_folder_of_sidecars_only_says_what_it_skipped(tmp_path, capsys):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.txt").write_text("no")
    (root / "a" / "y.ogg").write_text("no")
    rc, _, _ = ingest(tmp_path, source="imagefolder", path=str(root))
    err = capsys.readouterr().err
    assert rc == 2 and "no images found under" in err and "2 other files skipped" in err and ".ogg" in err


def _line_art(path, shape: str, ink: int):
    """A drawing in `ink` (0 black, 255 white) on a fully transparent background."""
    from PIL import Image, ImageDraw

    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    if shape == "cross":
        draw.line((4, 4, 28, 28), fill=(ink, ink, ink, 255), width=3)
        draw.line((4, 28, 28, 4), fill=(ink, ink, ink, 255), width=3)
    else:
        draw.ellipse((6, 6, 26, 26), outline=(ink, ink, ink, 255), width=3)
    img.save(path)


def test_transparent_line_art_keeps_its_picture_and_records_the_background(tmp_path, capsys, caplog):
    root = tmp_path / "root"
    for ink, name in ((0, "black"), (255, "white")):
        for shape in ("cross", "ring"):
            _line_art(root / shape / f"{name}.png", shape, ink)
    _png(root / "cross" / "opaque.png", 90)
    rc, metrics, out = ingest(tmp_path, source="imagefolder", path=str(root), image_size=16, channels=1)
    assert rc == 0, capsys.readouterr().err
    df, _ = dataset.read_manifest(out)
    bg = dict(zip(df["path"], df["background"].astype(object).where(df["background"].notna(), None)))
    assert bg == {"cross/black.png": "white", "cross/white.png": "black", "ring/black.png": "white",
                  "ring/white.png": "black", "cross/opaque.png": None}  # fmt: skip
    assert metrics["transparent"] == {"black": 2, "white": 2} and metrics["identical_decodes"]["files"] == 0
    for path in bg:
        if path != "cross/opaque.png":
            x = pixels(out, path).astype(int)
            assert x.max() - x.min() > 100, path  # the drawing shows against its background
    assert len(set(df["pixel_sha256"])) == len(df)
    # onto black, as before: black line art comes out as identical black squares, and ingest says so
    rc, metrics, out = ingest(tmp_path, "black", quiet=False, source="imagefolder", path=str(root), image_size=16,
                              channels=1, background="black")  # fmt: skip
    assert rc == 0 and metrics["identical_decodes"] == {"files": 2, "groups": 1}
    lost = pd.read_csv(out / stage.IDENTICAL)
    assert sorted(lost["path"]) == ["cross/black.png", "ring/black.png"]
    assert "2 distinct files decode to identical pixels" in caplog.text


def test_byte_identical_copies_are_duplicates_not_a_lost_decode(tmp_path):
    root = tmp_path / "root"
    _line_art(root / "a" / "x.png", "cross", 0)
    (root / "a" / "y.png").write_bytes((root / "a" / "x.png").read_bytes())
    _png(root / "b" / "z.png", 10)
    rc, metrics, _ = ingest(tmp_path, source="imagefolder", path=str(root), image_size=16, background="black")
    assert rc == 0 and metrics["identical_decodes"]["files"] == 0
