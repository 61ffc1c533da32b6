"""The near-duplicate candidate search: the hand-written inverted file (`own`) vs faiss's IVF.

Usage (from the project root, on a quiet machine; Fashion-MNIST IDX files installed):
    .venv/bin/python bench/bench_neardup_index.py            # both parts, a few minutes on 2 cores
    .venv/bin/python bench/bench_neardup_index.py --only synthetic --n 1000000

real       split.clusters() on the 70,000 Fashion-MNIST images with each index, in one run: wall
           time, candidate and accepted pairs, and whether the clusters agree.
synthetic  N unit-norm descriptors (100 dims, the thumb descriptor's size) drawn around 20,000
           prototypes, with 2,000 planted near copies: index build time, query time for 100,000
           queries (the planted copies among them), recall of the planted copies, and the
           query time projected to N x 25 offset queries (max_shift 2, both ways).
Writes bench/neardup_index_results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_split import ingest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.core.params import NearDuplicates  # noqa: E402
from pipeline.dedup import neardup  # noqa: E402
from pipeline.stages import split  # noqa: E402

OUT = ROOT / "bench" / "neardup_index_results.json"
KINDS = ("own", "faiss")


def bench_real(work: Path) -> dict:
    fm = ingest({"ingest": {"source": "fashion-mnist"}}, work / "fmnist")
    out, ids = {}, {}
    for kind in KINDS:
        t = time.perf_counter()
        found = split.clusters(fm, NearDuplicates(index=kind))
        seconds = time.perf_counter() - t
        ids[kind] = found.cluster_id.to_numpy()
        near = int((found.pairs["kind"] == "near").sum())
        out[kind] = {"seconds": round(seconds, 1), "near_pairs": near, "pairs": len(found.pairs)}
        print(f"  real 70k, {kind:5s}: {seconds:6.1f} s, {near} near pairs", flush=True)
    out["same_clusters"] = bool((ids["own"] == ids["faiss"]).all())
    return out


def synthetic(n: int, dims: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(20_000, dims)).astype(np.float32)
    base = protos[rng.integers(0, len(protos), n)] + rng.normal(scale=0.35, size=(n, dims)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    planted = rng.choice(n, 2000, replace=False)
    copies = base[planted] + rng.normal(scale=0.004, size=(len(planted), dims)).astype(np.float32)
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    return base, planted, copies


def bench_synthetic(n: int, queries: int = 100_000) -> dict:
    base, planted, copies = synthetic(n)
    queries = min(queries, n)
    rng = np.random.default_rng(1)
    others = base[rng.choice(n, queries - len(copies), replace=False)]
    q = np.concatenate([copies, others])
    out = {"n": n, "queries": queries}
    for kind in KINDS:
        t = time.perf_counter()
        index = neardup.INDEXES[kind](base)
        built = time.perf_counter() - t
        t = time.perf_counter()
        qr, b, _ = index.query(q, radius=0.12, neighbours=4, probes=2)
        took = time.perf_counter() - t
        hit = qr < len(copies)
        recall = np.isin(np.arange(len(copies)), qr[hit][b[hit] == planted[qr[hit]]]).mean()
        projected = took / queries * n * 25
        out[kind] = {
            "build_s": round(built, 2),
            "query_s": round(took, 2),
            "recall_planted": round(float(recall), 4),
            "projected_query_s_all_offsets": round(projected, 1),
        }
        print(
            f"  synthetic {n:>9,}, {kind:5s}: build {built:6.1f} s, {queries:,} queries {took:6.1f} s, "
            f"recall {recall:.4f}, projected {n:,} x 25 offsets: {projected / 60:.1f} min",
            flush=True,
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["real", "synthetic"])
    ap.add_argument("--n", type=int, nargs="+", default=[70_000, 1_000_000], help="synthetic sizes")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    import faiss

    results = {"cpu_count": os.cpu_count(), "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads()}
    if args.only in (None, "real"):
        with tempfile.TemporaryDirectory() as work:
            results["real"] = bench_real(Path(work))
    if args.only in (None, "synthetic"):
        results["synthetic"] = [bench_synthetic(n) for n in args.n]
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
