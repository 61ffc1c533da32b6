"""Leak-safe split on Fashion-MNIST: clustering time, planted-duplicate recall, real findings.

Usage (from the project root; Fashion-MNIST IDX files in /usr/share/datasets/fashion-mnist):
    .venv/bin/python bench/bench_split.py                 # everything, ~1.5 min on 2 cores
    .venv/bin/python bench/bench_split.py --only timing   # or planted, methods, real

timing   split.clusters() on the first 5k/10k/20k/40k/70k images (fixed random order), with
         the growth exponent fitted by least squares on log(time) ~ log(n).
planted  an image folder of N distinct Fashion-MNIST images plus 200 copies per kind (shift
         by 1 or 2 px with zero / edge / wrap-around fill, brightness x1.1 / x0.9, Gaussian
         noise sigma 5, JPEG quality 75, saved at 0.9x / 1.1x size), ingested and split by
         the pipeline: per kind, the share of copies in their original's cluster (and so
         split); the share of distinct originals merged with another; the independent
         check's own recall per kind.
methods  the same planted images through alternative detectors (perceptual hash alone,
         no shift search, no blur matching, ...), to show why the cascade is built so.
real     what the detector finds in the 70,000 real images (within train, within test,
         across the official split), the split stage's removals, and a picture.
Writes bench/split_results.json and bench/split_*.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PIPELINE_QUIET", "1")

from pipeline.core import dataset  # noqa: E402
from pipeline.core.params import NearDuplicates, Split  # noqa: E402
from pipeline.dedup import leakcheck, neardup  # noqa: E402
from pipeline.render import gallery  # noqa: E402
from pipeline.stages import split  # noqa: E402

OUT = ROOT / "bench"
KINDS = [
    "exact",
    "shift1",
    "shift2",
    "shift2_edge",
    "shift2_wrap",
    "bright",
    "dark",
    "noise",
    "jpeg75",
    "rescale0.9",
    "rescale1.1",
]


def ingest(params: dict, out: Path) -> pd.DataFrame:
    pfile = out.parent / f"{out.name}.params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "ingest",
            "--params",
            str(pfile),
            "--out",
            str(out),
            "--metrics",
            str(out.parent / f"{out.name}.json"),
            "--quiet",
        ],
        cwd=ROOT,
        check=True,
    )
    return dataset.read_manifest(out)[0]


def fit_exponent(n: list[int], t: list[float]) -> float:
    return float(np.polyfit(np.log(n), np.log(t), 1)[0])


# ---------------------------------------------------------------- planting


def shifted(img: np.ndarray, dy: int, dx: int, fill: str) -> np.ndarray:
    if fill == "wrap":
        return np.roll(img, (dy, dx), (0, 1))
    h, w = img.shape[:2]
    p = np.pad(img, ((2, 2), (2, 2), (0, 0)), mode="edge" if fill == "edge" else "constant")
    return p[2 - dy : 2 - dy + h, 2 - dx : 2 - dx + w]


def plant(img: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """A copy of one (H, W, 1) image as a PIL image and the file suffix it is saved with."""
    x = img.astype(np.float64)
    if kind.startswith("shift"):
        s = int(kind[5])
        dy, dx = [(s, 0), (-s, 0), (0, s), (0, -s), (s, s), (-s, s), (s, -s), (-s, -s)][rng.integers(8)]
        fill = kind.split("_")[1] if "_" in kind else "zero"
        x = shifted(img, dy, dx, fill).astype(np.float64)
    elif kind in ("bright", "dark"):
        x = x * (1.1 if kind == "bright" else 0.9)
    elif kind == "noise":
        x = x + rng.normal(0.0, 5.0, x.shape)
    pil = Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8)[:, :, 0])
    if kind == "jpeg75":
        return pil, ".jpg"
    if kind.startswith("rescale"):
        side = round(img.shape[0] * float(kind[7:]))
        return pil.resize((side, side), Image.Resampling.BILINEAR), ".png"
    return pil, ".png"


def planted_folder(
    pixels: np.ndarray, labels: np.ndarray, root: Path, n_distinct: int, per_kind: int, seed: int = 0
) -> None:
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(pixels), n_distinct, replace=False)
    with_copy = chosen[: per_kind * len(KINDS)]
    for idx in chosen:
        d = root / f"c{labels[idx]}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[idx][:, :, 0]).save(d / f"orig_{idx:05d}.png")
    for k, idx in enumerate(with_copy):
        kind = KINDS[k // per_kind]
        pil, suffix = plant(pixels[idx], kind, rng)
        name = root / f"c{labels[idx]}" / f"copy_{kind}_of_{idx:05d}{suffix}"
        pil.save(name, quality=75) if suffix == ".jpg" else pil.save(name)


def parse_paths(df: pd.DataFrame) -> pd.DataFrame:
    stem = df["path"].str.rsplit("/", n=1).str[-1].str.rsplit(".", n=1).str[0]
    return df.assign(
        orig=stem.str[-5:].astype(int), kind=np.where(stem.str.startswith("copy_"), stem.str[5:-9], "original")
    )


def planted_scores(df: pd.DataFrame, same: pd.Series) -> dict:
    """Per kind, the share of copies whose `same` holds; wrongly merged originals."""
    out = {}
    for kind in KINDS:
        m = df["kind"] == kind
        out[kind] = round(float(same[m].mean()), 4) if m.any() else None
    return out


# ---------------------------------------------------------------- sections


def bench_timing(fm: pd.DataFrame, sizes: list[int]) -> dict:
    order = np.random.default_rng(0).permutation(len(fm))
    cfg = NearDuplicates()
    times = []
    for n in sizes:
        sub = fm.iloc[np.sort(order[:n])].reset_index(drop=True)
        t = time.perf_counter()
        found = split.clusters(sub, cfg)
        times.append(time.perf_counter() - t)
        near = int((found.pairs["kind"] == "near").sum())
        print(f"  clustering {n:6d} images: {times[-1]:6.1f} s  ({near} near pairs)", flush=True)
    k = fit_exponent(sizes, times)
    print(f"  fitted growth exponent (log-log least squares): {k:.2f}")
    return {
        "sizes": sizes,
        "seconds": [round(x, 2) for x in times],
        "exponent": round(k, 3),
        "cpu_count": os.cpu_count(),
    }


def bench_planted(pixels: np.ndarray, labels: np.ndarray, work: Path, n_distinct: int, per_kind: int) -> dict:
    root = work / "folder"
    shutil.rmtree(root, ignore_errors=True)
    planted_folder(pixels, labels, root, n_distinct, per_kind)
    df = parse_paths(
        ingest(
            {"ingest": {"source": "imagefolder", "path": str(root), "image_size": 28, "channels": 1}}, work / "planted"
        )
    )
    t = time.perf_counter()
    out, metrics = split.partition(df, Split(fail_on_leak=False), seed=0)
    t_split = time.perf_counter() - t
    out = out.assign(orig=df["orig"].to_numpy(), kind=df["kind"].to_numpy())
    originals = out[out["kind"] == "original"].set_index("orig")
    same_cluster = out["cluster_id"] == out["orig"].map(originals["cluster_id"])
    same_split = out["split"] == out["orig"].map(originals["split"])
    per_cluster = originals.groupby("cluster_id").size()
    merged = int((originals["cluster_id"].map(per_cluster) > 1).sum())
    # The independent check's own recall: its detector run over all pairs, not only across splits.
    images = split.store_images(out)
    ck = leakcheck.NearDuplicateCheck().detector().find(images)
    found = set(zip(ck["i"].tolist(), ck["j"].tolist()))
    pos = pd.Series(np.arange(len(out)), index=out.index)
    orig_pos = out["orig"].map(pd.Series(pos[out["kind"] == "original"].to_numpy(), index=originals.index))
    check_hit = pd.Series([(min(a, b), max(a, b)) in found for a, b in zip(pos, orig_pos)], index=out.index)
    # precision: of the pairs inside the clusters formed, the share joining a copy to its own
    # original (or two copies of one original); per kind, over the pairs that involve a copy of it
    members = out.reset_index()[["index", "cluster_id", "orig", "kind"]]
    pairs = members.merge(members, on="cluster_id", suffixes=("_a", "_b"))
    pairs = pairs[pairs["index_a"] < pairs["index_b"]]
    right = pairs["orig_a"] == pairs["orig_b"]
    precision = {k: round(float(right[(pairs["kind_a"] == k) | (pairs["kind_b"] == k)].mean()), 4) for k in KINDS}
    res = {
        "distinct_images": n_distinct,
        "copies_per_kind": per_kind,
        "pairs_in_clusters": int(len(pairs)),
        "pair_precision": round(float(right.mean()), 4),
        "precision": precision,
        "recall_same_cluster": planted_scores(out, same_cluster),
        "recall_same_split": planted_scores(out, same_split),
        "wrongly_merged_originals": merged,
        "wrongly_merged_rate": round(merged / n_distinct, 5),
        "check_recall": planted_scores(out, check_hit),
        "split_stage_seconds": round(t_split, 2),
        "cross_split_exact": metrics["cross_split_exact"],
        "cross_split_near_duplicates": metrics["cross_split_near_duplicates"],
    }
    print(f"  planted: {n_distinct} distinct + {per_kind} copies x {len(KINDS)} kinds; split stage {t_split:.1f} s")
    for kind in KINDS:
        print(
            f"    {kind:12s} same cluster {res['recall_same_cluster'][kind]:.3f}  same split "
            f"{res['recall_same_split'][kind]:.3f}  precision {res['precision'][kind]:.3f}  "
            f"(independent check alone: recall {res['check_recall'][kind]:.3f})"
        )
    print(f"    pairs inside clusters: {len(pairs)}, precision {res['pair_precision']:.4f}")
    print(
        f"    distinct originals merged with another: {merged} of {n_distinct} "
        f"({merged / n_distinct:.3%}); post-hoc leaks: exact {metrics['cross_split_exact']}, "
        f"near {metrics['cross_split_near_duplicates']}"
    )
    out.to_parquet(work / "planted_split.parquet")
    return res


def bench_methods(work: Path) -> dict:
    out = pd.read_parquet(work / "planted_split.parquet")
    df, _ = dataset.read_manifest(work / "planted")
    images = split.store_images(df)
    orig_pos = out["orig"].map(
        pd.Series(
            np.flatnonzero(out["kind"] == "original"), index=out.loc[out["kind"] == "original", "orig"].to_numpy()
        )
    )
    base = split.detector(NearDuplicates())
    thumb, phash = neardup.Descriptor("thumb"), neardup.Descriptor("phash")
    variants = {
        "cascade (the split stage)": base,
        "perceptual hash alone, hamming <= 8": neardup.Cascade(
            phash, max_shift=0, radius=0.713, rms_threshold=255, peak_threshold=None
        ),
        "perceptual hash + shift search, rms <= 5 (the check)": leakcheck.NearDuplicateCheck().detector(),
        "cascade without shift search": neardup.Cascade(thumb, max_shift=0),
        "cascade without blur matching": neardup.Cascade(thumb, blurs=()),
        "cascade, rms rule only (<= 6.5)": neardup.Cascade(thumb, peak_threshold=None),
        "cascade, peak rule only (<= 12)": neardup.Cascade(thumb, rms_threshold=None),
    }
    res = {}
    for name, det in variants.items():
        t = time.perf_counter()
        found = det.find(images)
        lab = neardup.components(len(out), [(found["i"].to_numpy(), found["j"].to_numpy())])
        same = pd.Series(lab == lab[orig_pos.to_numpy()], index=out.index)
        is_orig = (out["kind"] == "original").to_numpy()
        olab = lab[is_orig]
        merged = int((pd.Series(olab).map(pd.Series(olab).value_counts()) > 1).sum())
        res[name] = {
            "recall": planted_scores(out, same),
            "wrongly_merged": merged,
            "seconds": round(time.perf_counter() - t, 2),
        }
        worst = min(res[name]["recall"].items(), key=lambda kv: kv[1])
        print(f"  {name:55s} min recall {worst[1]:.3f} ({worst[0]}), merged originals {merged}")
    return res


def bench_real(fm: pd.DataFrame, work: Path) -> dict:
    t = time.perf_counter()
    found = split.clusters(fm, NearDuplicates())
    t_cluster = time.perf_counter() - t
    out, metrics = split.partition(fm, Split(fail_on_leak=False), seed=0, found=found)
    src = fm.set_index("sample_id")["source_split"]
    p = found.pairs.assign(a=found.pairs["sample_a"].map(src), b=found.pairs["sample_b"].map(src))
    where = np.where(p["a"] != p["b"], "across", "within_" + p["a"])
    counts = {
        f"{w}_{k}": int(((where == w) & (p["kind"] == k)).sum())
        for w in ("within_train", "within_test", "across")
        for k in ("exact", "near")
    }
    res = {
        "images": len(fm),
        "cluster_seconds": round(t_cluster, 2),
        "pairs": counts,
        "duplicate_sets": metrics["duplicates"]["sets"],
        "samples_in_sets": metrics["duplicates"]["samples_in_sets"],
        "label_conflicts": metrics["duplicates"]["label_conflicts"],
        "removed_by_rule": metrics["removed_by_rule"],
        "train": metrics["train"],
        "val": metrics["val"],
        "test": metrics["test"],
        "cross_split_exact": metrics["cross_split_exact"],
        "cross_split_near_duplicates": metrics["cross_split_near_duplicates"],
    }
    print(
        f"  real Fashion-MNIST: clustering {t_cluster:.1f} s; pairs {counts}; "
        f"{res['samples_in_sets']} images in {res['duplicate_sets']} duplicate sets; "
        f"removed {res['removed_by_rule']}; post-hoc leaks exact {res['cross_split_exact']}, "
        f"near {res['cross_split_near_duplicates']}"
    )
    pix = {}
    rows, caps = [], []
    idx = fm.reset_index().set_index("sample_id")["index"]
    for w in ("within_train", "within_test", "across"):
        sel = p[where == w].sort_values("peak", ascending=False).head(8)
        for r in sel.itertuples():
            rows += [idx[r.sample_a], idx[r.sample_b]]
            caps += [f"{r.a}", f"{r.b} r{r.rms:.0f} p{r.peak:.0f}"]
    pix = dataset.load_pixels(fm.iloc[rows])
    gallery.save(
        gallery.grid(
            pix,
            caps,
            cols=8,
            cell=64,
            title="Fashion-MNIST near duplicates (pairs; r: rms, p: peak residual): "
            "within train, within test, across train/test",
        ),
        OUT / "split_fmnist_duplicates.png",
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["timing", "planted", "methods", "real"], action="append")
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000, 40000, 70000])
    ap.add_argument("--distinct", type=int, default=10000)
    ap.add_argument("--per-kind", type=int, default=200)
    ap.add_argument("--work", help="keep intermediate data here (default: a temporary folder)")
    args = ap.parse_args()
    todo = args.only or ["timing", "planted", "methods", "real"]
    results_file = OUT / "split_results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        print("ingesting Fashion-MNIST ...", flush=True)
        fm = ingest({"ingest": {"source": "fashion-mnist"}}, work / "fmnist")
        if "timing" in todo:
            results["timing"] = bench_timing(fm, args.sizes)
        if "planted" in todo or "methods" in todo:
            pixels = dataset.load_pixels(fm)
            labels = fm["label_id"].to_numpy()
            if "planted" in todo or not (work / "planted_split.parquet").exists():
                results["planted"] = bench_planted(pixels, labels, work, args.distinct, args.per_kind)
            if "methods" in todo:
                results["methods"] = bench_methods(work)
        if "real" in todo:
            results["real"] = bench_real(fm, work)
    dataset.write_json(results_file, results)
    print(f"wrote {results_file.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
