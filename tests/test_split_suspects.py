"""Suspected duplicates across splits (pipeline/dedup/suspects.py, split's looser content check):
one picture drawn at three sizes, which the near-duplicate cascade does not join."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from pipeline.__main__ import main as cli
from pipeline.core import dataset, params
from pipeline.dedup import neardup, suspects
from pipeline.stages import ingest, split

SIZES = (24, 48, 96)


def draw(design: int, size: int) -> Image.Image:
    """Design `design` (three random shapes) drawn, not resampled, at `size` px: each size hints its
    edges differently, as an icon theme's renderings do."""
    rng = np.random.default_rng(design)
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    pen = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = rng.uniform(0, 0.6, 2)
        w, h = rng.uniform(0.2, 0.4, 2)
        box = [x0 * size, y0 * size, (x0 + w) * size, (y0 + h) * size]
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (pen.ellipse if rng.random() < 0.5 else pen.rectangle)(box, fill=colour)
    return img


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """60 designs in 3 classes, each at 24, 48 and 96 px; ingested at 32 px."""
    root = tmp_path_factory.mktemp("renders")
    for d in range(60):
        folder = root / "images" / f"c{d % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        for size in SIZES:
            draw(d, size).save(folder / f"d{d:02d}_{size}.png")
    p = params.parse({"ingest": {"source": "imagefolder", "path": str(root / "images"), "image_size": 32}})
    ingest.write(p, root / "ingest")
    return root


def run_split(root, tmp_path, cfg: dict) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    (tmp_path / "params.yaml").write_text(json.dumps({"split": cfg}))
    args = ["split", "--ingest", str(root / "ingest"), "--embed", str(root / "embed"), "--out", str(tmp_path / "split")]
    args += ["--metrics", str(tmp_path / "split.json"), "--plots", str(tmp_path / "plots")]
    assert cli([*args, "--params", str(tmp_path / "params.yaml"), "--quiet"]) == 0
    df, _ = dataset.read_manifest(tmp_path / "split")
    pairs = pd.read_csv(tmp_path / "split" / split.SUSPECTED)
    return df, json.loads((tmp_path / "split.json").read_text()), pairs


def design_of(df: pd.DataFrame) -> pd.Series:
    return df["path"].str.extract(r"(d\d+)_")[0]


def test_renderings_that_cross_splits_are_suspected_and_nothing_else(ingested, tmp_path):
    df, m, pairs = run_split(ingested, tmp_path, {})
    design = design_of(df)
    crossing = df.assign(design=design).groupby("design")["split"].nunique() > 1
    assert crossing.sum() >= 10  # the cascade does not join them: the split scatters many designs
    by_id = dict(zip(df["sample_id"], design))
    same = [by_id[a] == by_id[b] for a, b in zip(pairs["sample_a"], pairs["sample_b"])]
    assert all(same), "a pair of distinct designs was suspected"
    # every val / test rendering whose design also has a rendering in another split is in a pair
    held = df[df["split"].isin(("val", "test"))].assign(design=design)
    other = {(d, s) for d, s in zip(design, df["split"])}
    expected = {
        r.sample_id
        for r in held.itertuples()
        if any((r.design, s) in other for s in ("train", "val", "test") if s != r.split)
    }
    found = set(pairs["sample_a"])
    assert found <= expected and len(found) >= 0.9 * len(expected), (len(found), len(expected))
    assert len(pairs) == m["suspected"]["pairs"] > 0
    assert (tmp_path / "plots" / "suspected_pairs.png").exists()


def test_joined_suspects_keep_the_designs_in_one_split(ingested, tmp_path):
    df, m, pairs = run_split(ingested, tmp_path, {"suspects": {"join": True}})
    crossing = df.assign(design=design_of(df)).groupby("design")["split"].nunique() > 1
    assert crossing.sum() <= 2  # of 60: a 24 px rendering may lie past the threshold
    assert len(pairs) == 0 and m["largest_cluster"] == len(SIZES)  # what still crosses is past the threshold; no chain


def test_off_says_so(ingested, tmp_path):
    df, m, pairs = run_split(ingested, tmp_path, {"suspects": {"enabled": False}})
    assert m["suspected"] == {"enabled": False, "pairs": 0, "checked": len(df[df["split"].isin(("val", "test"))])}


def test_the_threshold_follows_the_datas_own_spacing():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    space = suspects.Space(x)
    limit, median = suspects.threshold(space, 0.13, 10)
    limit2, median2 = suspects.threshold(space, 0.26, 10)
    assert median == median2 > 0 and limit == pytest.approx(0.13 * median) and limit2 == pytest.approx(2 * limit)
    exact = np.median(np.sort(1 - x @ x.T + 3 * np.eye(len(x)), axis=1)[:, 9])  # brute force
    assert median == pytest.approx(exact, rel=1e-5)
    # many exact copies: the median nearest distance is 0, the 10th's is not
    copies = suspects.Space(np.repeat(x[:100], 4, axis=0))
    assert suspects.threshold(copies, 0.13, 1)[1] == pytest.approx(0, abs=1e-6)
    assert suspects.threshold(copies, 0.13, 10)[1] > 0.1


def test_descriptors_see_one_picture_at_any_size():
    a, b, c = (np.asarray(draw(7, s).resize((32, 32), Image.Resampling.BILINEAR)) for s in SIZES)
    other = np.asarray(draw(8, 48).resize((32, 32), Image.Resampling.BILINEAR))
    d = suspects.descriptors(neardup.Images.from_array(np.stack([a, b, c, other])))
    dist = 1 - d @ d.T
    assert max(dist[0, 1], dist[0, 2], dist[1, 2]) < dist[0:3, 3].min()


def chain_folder(root, steps: int = 40, sigma: float = 5.8):
    """Class a: a chain, each image the previous one plus noise (rms ~5.8: a near duplicate to the
    cascade, not to the stricter check), its ends far apart; classes b and c: distinct images."""
    rng = np.random.default_rng(0)
    x = np.asarray(Image.fromarray(rng.integers(60, 196, (8, 8), dtype=np.uint8)).resize((32, 32)), np.float64)
    for k in range(steps):
        x = np.clip(x + rng.normal(0, sigma, x.shape), 0, 255)
        (root / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.rint(x).astype(np.uint8)).save(root / "a" / f"{k:02d}.png")
    for c in "bc":
        (root / c).mkdir(parents=True, exist_ok=True)
        for k in range(steps):
            Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(root / c / f"{k:02d}.png")


@pytest.mark.parametrize("limit, whole", [({}, False), ({"share": 1.0, "min_size": 1000}, True)])
def test_a_chain_of_near_duplicates_does_not_swallow_its_class(tmp_path, limit, whole):
    chain_folder(tmp_path / "images")
    p = params.parse({"ingest": {"source": "imagefolder", "path": str(tmp_path / "images")}})
    ingest.write(p, tmp_path / "ingest")
    df, m, _ = run_split(tmp_path, tmp_path, {"cluster_limit": limit, "suspects": {"enabled": False}})
    chain = df[df["label"] == "a"]
    if whole:  # without a limit, union-find joins the chain into one cluster: one split holds the class
        assert chain["cluster_id"].nunique() == 1 and chain["split"].nunique() == 1
        assert m["cluster_limit"]["cut_links"] == 0
        return
    assert df.groupby("cluster_id").size().max() <= 8  # max(8, 0.1 x 40)
    assert set(chain["split"]) == {"train", "val", "test"}
    lim = m["cluster_limit"]
    assert lim["cut_links"] >= 4 and lim["weakest_cut"][0]["rms"] >= lim["weakest_cut"][-1]["rms"]
    assert m["cross_split_near_duplicates"] == 0  # what was cut the stricter check does not call a copy
    links = pd.read_csv(tmp_path / "split" / split.DUPLICATES)
    assert links["cut"].sum() == lim["cut_links"]


def test_a_backbones_neighbours_are_suspected_too(ingested, tmp_path):
    """With embeddings (a backbone set), a val/test sample whose embedding matches one in another
    split is suspected even where the pixels differ (`by: embedding`)."""
    df, _, content = run_split(ingested, tmp_path, {})
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((len(df), 64)).astype(np.float32)
    a = np.flatnonzero(df["split"] == "test")[0]
    b = np.flatnonzero((df["split"] == "train") & (df["cluster_id"] != df["cluster_id"].iloc[a]))[5]
    emb[a] = emb[b] + 1e-4  # the same picture to the backbone
    cfg = params.parse({}).split.suspects
    pairs, m = split.suspected_pairs(df, cfg, embeddings=emb)
    by_embedding = pairs[pairs["by"] == "embedding"]
    assert (by_embedding["sample_a"] == df["sample_id"].iloc[a]).any()
    assert m["embedding_pairs"] >= 1 and m["content_pairs"] == len(content) and m["embedding_threshold"] > 0
    assert set(pairs["by"]) <= {"content", "embedding"} and not pairs.duplicated(["sample_a", "sample_b"]).any()
