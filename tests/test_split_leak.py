"""Leak-safe split: duplicate clusters, the removal rules, the post-hoc checks, the detector.

Tiny data: scikit-learn's 8x8 digits, and smooth random 28x28 grey and 32x32 RGB images;
copies of each kind the split must catch are planted at the limits the issue names.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.__main__ import main as cli
from pipeline.core import dataset, params
from pipeline.core.errors import PipelineError
from pipeline.core.params import NearDuplicates, Split
from pipeline.dedup import leakcheck, neardup
from pipeline.stages import split

KINDS = ["exact", "shift1", "shift2", "shift2_wrap", "bright", "dark", "noise", "jpeg75", "rescale0.9", "rescale1.1"]
PER_KIND = 6


def _digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return np.rint(load_digits().images * (255 / 16)).astype(np.uint8)[..., None]


def _fields(n: int, side: int, channels: int, seed: int) -> np.ndarray:
    """Smooth random images: blurred noise stretched to 0..255, all different."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, side, side, channels)).astype(np.float32)
    for _ in range(3):  # a cheap blur: average with the 4-neighbours, three times
        x = (x + np.roll(x, 1, 1) + np.roll(x, -1, 1) + np.roll(x, 1, 2) + np.roll(x, -1, 2)) / 5
    lo, hi = x.min((1, 2, 3), keepdims=True), x.max((1, 2, 3), keepdims=True)
    return np.rint(255 * (x - lo) / (hi - lo)).astype(np.uint8)


FORMATS = {
    "digits 8x8": lambda: _digits()[:300],
    "grey 28x28": lambda: _fields(300, 28, 1, 1),
    "RGB 32x32": lambda: _fields(300, 32, 3, 2),
}


def _pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img)


def _back(pil: Image.Image, like: np.ndarray) -> np.ndarray:
    pil = pil.convert("L" if like.shape[2] == 1 else "RGB")
    if pil.size != like.shape[1::-1]:  # what ingest does to a file of another size
        pil = pil.resize(like.shape[1::-1], Image.Resampling.BILINEAR)
    return np.asarray(pil, np.uint8).reshape(like.shape)


def plant(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    x = img.astype(np.float64)
    if kind.startswith("shift"):
        s = int(kind[5])
        dy, dx = [(s, 0), (0, -s), (s, s), (-s, s)][rng.integers(4)]
        if kind.endswith("wrap"):
            return np.roll(img, (dy, dx), (0, 1))
        p = np.pad(img, ((2, 2), (2, 2), (0, 0)))
        return p[2 - dy : 2 - dy + img.shape[0], 2 - dx : 2 - dx + img.shape[1]]
    if kind in ("bright", "dark"):
        x = x * (1.1 if kind == "bright" else 0.9)
    elif kind == "noise":
        x = x + rng.normal(0, 5, x.shape)
    elif kind == "jpeg75":
        buf = io.BytesIO()
        _pil(img).save(buf, "JPEG", quality=75)
        return _back(Image.open(buf), img)
    elif kind.startswith("rescale"):
        side = max(2, round(img.shape[0] * float(kind[7:])))
        return _back(_pil(img).resize((side, side), Image.Resampling.BILINEAR), img)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def manifest(tmp_path, pixels: np.ndarray, name: str = "images", **columns) -> pd.DataFrame:
    store = tmp_path / f"{name}.npy"
    np.save(store, pixels)
    n = len(pixels)
    df = pd.DataFrame(
        {
            "sample_id": [f"{name}{i:04d}" for i in range(n)],
            "label": columns.pop("label", [str(i % 3) for i in range(n)]),
            "group": columns.pop("group", [None] * n),
            "source_split": columns.pop("source_split", [None] * n),
            "pixel_sha256": [dataset.pixel_hash(p) for p in pixels],
            "store": str(store),
            "row": np.arange(n),
        }
    )
    return df.assign(**columns)


def planted(tmp_path, fmt: str, seed: int = 0) -> pd.DataFrame:
    """Originals, then PER_KIND copies of each kind, each of a different original."""
    orig = FORMATS[fmt]()
    rng = np.random.default_rng(seed)
    copies, of, kinds = [], [], []
    for k, kind in enumerate(KINDS):
        for t in range(PER_KIND):
            i = k * PER_KIND + t
            copies.append(plant(orig[i], kind, rng))
            of.append(i)
            kinds.append(kind)
    pixels = np.concatenate([orig, np.stack(copies)])
    df = manifest(tmp_path, pixels, name=fmt.split()[0])
    labels = df["label"].to_numpy()
    labels[len(orig) :] = labels[of]
    return df.assign(label=labels, of=[-1] * len(orig) + of, kind=["original"] * len(orig) + kinds)


@pytest.fixture(scope="module")
def clustered(tmp_path_factory) -> dict:
    out = {}
    for fmt in FORMATS:
        df = planted(tmp_path_factory.mktemp("planted"), fmt)
        out[fmt] = df.assign(cluster_id=split.clusters(df, NearDuplicates()).cluster_id)
    return out


TINY_RESCALE = pytest.mark.xfail(
    strict=True,
    reason="an 8x8 image saved at 7 or 9 px changes too much for the descriptor search (measured: 0 of 50 found)",
)


@pytest.mark.parametrize(
    "fmt, kind",
    [
        pytest.param(f, k, marks=TINY_RESCALE if f.startswith("digits") and k.startswith("rescale") else ())
        for f in FORMATS
        for k in KINDS
    ],
)
def test_each_planted_kind_lands_in_its_originals_cluster(clustered, fmt, kind):
    df = clustered[fmt]
    copies = df[df["kind"] == kind]
    same = copies["cluster_id"].to_numpy() == df["cluster_id"].to_numpy()[copies["of"]]
    assert same.all(), f"{fmt} {kind}: {int((~same).sum())} of {len(copies)} copies not joined"


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_the_faiss_index_forms_the_same_clusters(clustered, fmt):
    df = clustered[fmt]
    with_faiss = split.clusters(df.drop(columns="cluster_id"), NearDuplicates(index="faiss")).cluster_id
    assert (with_faiss.to_numpy() == df["cluster_id"].to_numpy()).all()


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_distinct_images_are_not_merged(clustered, fmt):
    originals = clustered[fmt][clustered[fmt]["kind"] == "original"]
    merged = originals["cluster_id"].duplicated(keep=False)
    allowed = 6 if fmt.startswith("digits") else 0  # 8x8 digits has a few near-identical "1"s
    assert merged.sum() <= allowed, originals[merged]["sample_id"].tolist()


def _leak_case(tmp_path, **split_kw):
    """40 images, the first 10 the source's test set; then train copies: an exact and a
    shifted copy of test images, an exact and a noisy copy of train images, and a new image
    sharing its group with a test image."""
    orig = _fields(40, 28, 1, 3)
    rng = np.random.default_rng(0)
    copies = np.stack([orig[0], plant(orig[1], "shift2", rng), orig[15], plant(orig[16], "noise", rng)])
    pixels = np.concatenate([orig, copies, _fields(1, 28, 1, 9)])
    n = len(pixels)
    source = ["test"] * 10 + ["train"] * (n - 10)
    group = [None] * n
    group[2], group[n - 1] = "same-person", "same-person"  # a test image and a new train one
    df = manifest(tmp_path, pixels, source_split=source, group=group)
    return df, Split(fractions={"train": 0.6, "val": 0.2, "test": 0.2}, **split_kw)


def test_train_duplicates_of_the_fixed_test_set_are_removed_by_rule(tmp_path):
    df, cfg = _leak_case(tmp_path)
    out, m = split.partition(df, cfg, seed=0)
    assert (out.loc[:9, "split"] == "test").all()  # test stays as given
    removed = out[out["split"] == "removed"].set_index("sample_id")
    assert removed["removed_reason"].to_dict() == {
        "images0040": "exact_duplicate_of_test",
        "images0041": "near_duplicate_of_test",
        "images0044": "group_shared_with_test",
    }
    assert removed["dup_of"].to_dict() == {
        "images0040": "images0000",
        "images0041": "images0001",
        "images0044": "images0002",
    }
    # copies of train images stay, with their originals, in one split
    assert out.loc[42, "split"] == out.loc[15, "split"] != "removed"
    assert out.loc[43, "split"] == out.loc[16, "split"] != "removed"
    assert m["removed_by_rule"] == {
        "exact_duplicate_of_test": 1,
        "group_shared_with_test": 1,
        "near_duplicate_of_test": 1,
    }
    assert m["in"] == m["kept"] + m["removed"] == 45
    assert m["test"] == 10 and m["cross_split_exact"] == m["cross_split_near_duplicates"] == 0


def _singletons(df: pd.DataFrame) -> split.Clusters:
    """A clustering that misses every duplicate."""
    ids = pd.Series("s:" + df["sample_id"], index=df.index)
    return split.Clusters(
        ids, pd.Series(None, index=df.index, dtype=object), pd.DataFrame(columns=["sample_a", "sample_b", "kind"])
    )


def test_fail_on_leak_raises_when_the_clustering_missed_a_leak(tmp_path):
    df, cfg = _leak_case(tmp_path)
    leak = r"duplicate pairs cross splits .*exact [1-9].*near_duplicates [1-9]"
    with pytest.raises(PipelineError, match=leak):
        split.partition(df, cfg, seed=0, found=_singletons(df))
    _, m = split.partition(df, cfg.model_copy(update={"fail_on_leak": False}), seed=0, found=_singletons(df))
    assert m["cross_split_exact"] >= 1 and m["cross_split_near_duplicates"] >= 1


def test_same_inputs_same_split_and_metrics(tmp_path):
    df = planted(tmp_path, "grey 28x28")
    a, ma = split.partition(df, Split(), seed=0)
    b, mb = split.partition(df.copy(), Split(), seed=0)
    pd.testing.assert_frame_equal(a, b)
    assert ma == mb
    c, _ = split.partition(df, Split(), seed=1)
    assert (a["cluster_id"] == c["cluster_id"]).all() and not a["split"].equals(c["split"])


def test_drop_duplicates_keeps_one_of_each_set_per_split(tmp_path):
    orig = _fields(30, 28, 1, 4)
    rng = np.random.default_rng(1)
    pixels = np.concatenate([orig, orig[:3], np.stack([plant(orig[3], "jpeg75", rng)])])
    df = manifest(tmp_path, pixels)
    _, m = split.partition(df, Split(), seed=0)
    assert sum(m["within_split_duplicates"].values()) == 4 and m["removed"] == 0
    out, m = split.partition(df, Split(drop_duplicates=True), seed=0)
    assert m["removed_by_rule"] == {"within_split_duplicate": 4}
    assert sum(m["within_split_duplicates"].values()) == 0
    assert set(out.loc[out["split"] == "removed", "dup_of"]) == {f"images{i:04d}" for i in range(4)}
    assert m["duplicates"]["exact_pairs"] == 3 and m["duplicates"]["near_pairs"] == 1


def test_group_is_a_further_must_link(tmp_path):
    orig = _fields(12, 28, 1, 5)
    pixels = np.concatenate([orig, orig[:1]])
    group = ["g1", "g1"] + [None] * 11
    out, _ = split.partition(manifest(tmp_path, pixels, group=group), Split(), seed=0)
    assert out.loc[[0, 1, 12], "cluster_id"].nunique() == 1 and out.loc[0, "cluster_id"] == "g:g1"
    assert out.loc[[0, 1, 12], "split"].nunique() == 1


# ---------------------------------------------------------------- the post-hoc checks

CHECK_CASES = {"exact": "exact", "near_duplicates": "shift2"}  # a planted leak each must find


@pytest.mark.parametrize("name", sorted(leakcheck.CHECKS))
def test_every_registered_check_finds_a_planted_cross_split_pair(tmp_path, name):
    assert name in CHECK_CASES, f"no test case for leak check {name!r}"
    orig = _fields(20, 28, 1, 6)
    pixels = np.concatenate([orig, plant(orig[0], CHECK_CASES[name], np.random.default_rng(0))[None]])
    df = manifest(tmp_path, pixels).assign(split=["test"] + ["train"] * 20)
    pairs = leakcheck.get(name)().find(df, split.store_images(df))
    assert pairs[["a", "b"]].values.tolist() == [[0, 20]]
    assert leakcheck.get(name).metric() == f"cross_split_{name}"


def test_unknown_check_and_bad_knobs_fail_naming_the_valid_ones():
    with pytest.raises(ValueError, match="must be one of exact, near_duplicates"):
        leakcheck.get("pixel_md5")
    with pytest.raises(PipelineError, match=r"split\.checks: expected a leak check \(one of exact"):
        params.parse({"split": {"checks": {"pixel_md5": {}}}})
    with pytest.raises(
        PipelineError,
        match=r"checks: near_duplicates\.hamming: expected less than or equal to 32, got 99 \(its knobs: max_shift",
    ):
        params.parse({"split": {"checks": {"near_duplicates": {"hamming": 99}}}})
    with pytest.raises(PipelineError, match=r"split\.near_duplicates\.max_shift"):
        params.parse({"split": {"near_duplicates": {"max_shift": -1}}})


def test_stage_writes_contract_outputs_and_fails_on_a_leak(tmp_path, capsys):
    orig = _fields(30, 28, 1, 7)
    pixels = np.concatenate([orig, plant(orig[0], "shift1", np.random.default_rng(0))[None]])
    df = manifest(tmp_path, pixels, source_split=["test"] + ["train"] * 30)
    df = df.assign(path=df["sample_id"], label_id=df["label"].astype(int), origin="real", parent_id=None)
    dataset.write_manifest(df, tmp_path / "ingest" / dataset.MANIFEST, ["0", "1", "2"])
    args = [
        "split",
        "--ingest",
        str(tmp_path / "ingest"),
        "--embed",
        str(tmp_path / "embed"),  # no backbone: not read
        "--out",
        str(tmp_path / "split"),
        "--metrics",
        str(tmp_path / "split.json"),
        "--plots",
        str(tmp_path / "plots"),
        "--params",
        str(tmp_path / "params.yaml"),
        "--quiet",
    ]
    (tmp_path / "params.yaml").write_text("split: {}\n")
    assert cli(args) == 0
    out, _ = dataset.read_manifest(tmp_path / "split")
    m = json.loads((tmp_path / "split.json").read_text())
    assert {"cluster_id", "split", "removed_reason", "dup_of", "dup_group"} <= set(out.columns)
    assert m["cross_split_exact"] == 0 and m["cross_split_near_duplicates"] == 0
    assert m["removed_by_rule"] == {"near_duplicate_of_test": 1}
    assert (tmp_path / "plots" / "largest_clusters.png").exists()
    assert (tmp_path / "plots" / "removed_pairs.png").exists()
    assert len(pd.read_csv(tmp_path / "split" / split.DUPLICATES)) == 1
    # without near-duplicate clustering the shifted copy leaks, and the check stops the stage
    (tmp_path / "params.yaml").write_text("split: {near_duplicates: {enabled: false}}\n")
    capsys.readouterr()
    assert cli(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "duplicate pairs cross splits" in err[0]


# ---------------------------------------------------------------- detector kernels


def test_descriptor_at_an_offset_is_the_descriptor_of_the_moved_image():
    img = _fields(1, 28, 1, 8)
    moved = np.roll(img, (2, -1), (1, 2))
    d = neardup.Descriptor("thumb")
    at_offset = d.compute(neardup.gray(moved), [(2, -1)])[0]
    plain = d.compute(neardup.gray(img), [(0, 0)])[0]
    at_zero = d.compute(neardup.gray(moved), [(0, 0)])[0]
    assert np.linalg.norm(at_offset - plain) < 0.05 < 0.5 < np.linalg.norm(at_zero - plain)


@pytest.mark.parametrize("kind", ["own", "faiss"])
def test_index_finds_what_brute_force_finds_without_comparing_all_pairs(kind):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4000, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    queries = base[:200] + rng.normal(scale=0.01, size=(200, 16)).astype(np.float32)
    index = neardup.INDEXES[kind](base)
    q, b, d = index.query(queries, radius=0.1, neighbours=1, probes=2)
    assert (b[np.argsort(q)] == np.arange(200)).all() and (d <= 0.1).all()
    far, _, _ = index.query(-queries, radius=0.1, neighbours=1, probes=2)
    assert len(far) == 0  # nothing within the radius: nothing returned
    if kind == "own":
        assert index.compared < 200 * 4000 / 10  # far from all pairs


def test_components_joins_chains_and_names_them_by_their_smallest_member():
    labels = neardup.components(6, [(np.array([5, 3]), np.array([3, 1]))])
    assert labels.tolist() == [0, 1, 2, 1, 4, 1]


def test_the_split_never_makes_a_split_its_own_check_refuses(tmp_path):
    # a clusterer blind to near duplicates (thresholds 0) beside a check that sees them: the pairs
    # the check would find join the clusters before splitting, so the guard finds nothing after
    orig = _fields(60, 28, 1, 4)
    rng = np.random.default_rng(1)
    pixels = np.concatenate([orig, np.stack([plant(orig[i], "noise", rng) for i in range(20)])])
    df = manifest(tmp_path, pixels)
    blind = NearDuplicates(rms_threshold=0.0, peak_threshold=0.0)
    cfg = Split(near_duplicates=blind)
    out, m = split.partition(df, cfg, seed=0)
    assert m["cross_split_near_duplicates"] == 0 and m["duplicates"]["near_pairs"] >= 10
    sets = out.dropna(subset=["dup_group"]).groupby("dup_group")["split"].nunique()
    assert len(sets) >= 10 and (sets == 1).all()  # each copy sits in its original's split
    without_check = split.clusters(df, blind)  # the clusterer alone misses them ...
    assert (without_check.pairs["kind"] == "near").sum() == 0
    with pytest.raises(PipelineError, match="cross splits"):  # ... and the guard would refuse its split
        split.partition(df, cfg, seed=0, found=without_check)


def test_colour_decides_near_duplicates_of_colour_images():
    # a red and a green square of the same luma on one background are one grey image, not a copy;
    # a JPEG re-encode of a noisy colour image is a copy
    rng = np.random.default_rng(0)
    base = np.clip(120 + rng.normal(0, 18, (64, 64, 3)), 0, 255).astype(np.uint8)
    red, green = base.copy(), base.copy()
    red[20:40, 20:40], green[20:40, 20:40] = (200, 60, 60), (60, 137, 60)
    buf = io.BytesIO()
    Image.fromarray(red).save(buf, "JPEG", quality=75)
    jpeg = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    detector = split.detector(NearDuplicates())
    found = detector.find(neardup.Images.from_array(np.stack([red, green, jpeg])))
    assert found[["i", "j"]].values.tolist() == [[0, 2]]
    grey = np.rint(neardup.gray(np.stack([red, green]))).astype(np.uint8)[..., None]
    assert len(detector.find(neardup.Images.from_array(grey))) == 1  # in grey they are one image


def test_a_class_too_small_for_val_and_test_is_named(tmp_path, caplog):
    pixels = _fields(61, 28, 1, 5)
    df = manifest(tmp_path, pixels, label=["a"] * 30 + ["b"] * 30 + ["ring"])
    _, m = split.partition(df, Split(), seed=0)
    missing = m["classes_missing_from"]
    assert sum(m["per_class"][s].get("ring", 0) for s in ("train", "val", "test")) == 1
    assert "ring" in missing["val"] + missing["test"] and not {"a", "b"} & set(missing["val"] + missing["test"])
    for s in ("val", "test"):
        assert ("ring" in missing[s]) == ("ring" not in m["per_class"][s])
