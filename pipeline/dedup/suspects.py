"""Suspected duplicates: the same picture re-rendered at another size, re-encoded or lightly edited,
which the near-duplicate cascade (neardup.py), built to verify pixel copies, does not join.

The content check is looser and cheaper: each image's intensity averaged down to 4x4, 8x8 and
16x16 (area averaging, so a 32 px and a 128 px rendering of one icon land on nearly the same
cells), each scale centred and scaled to unit norm, the three side by side (`descriptors`). Two
images are suspected when their cosine distance is at most `factor` x the median distance from a
sample to its nearest neighbour in the data (cleanlab's near_duplicate rule: the threshold comes
from the data's own spacing, not from a constant tuned on one dataset).

`nearest` searches a PCA projection of the descriptors for candidates and re-scores them in full:
work grows as queries x references x `dims`, not x the full width.
"""

from __future__ import annotations

import numpy as np

from pipeline.dedup import neardup

SCALES = (4, 8, 16)


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) rows averaging the input cells each output cell covers (fractional overlap)."""
    edges = np.linspace(0, n_in, n_out + 1)
    m = np.zeros((n_out, n_in), np.float32)
    for o in range(n_out):
        for i in range(int(edges[o]), int(np.ceil(edges[o + 1]))):
            m[o, i] = min(edges[o + 1], i + 1) - max(edges[o], i)
    return m / m.sum(axis=1, keepdims=True)


def descriptors(images: neardup.Images) -> np.ndarray:
    """(N, 336) float32 unit-norm multi-scale descriptors of `images` (luma for RGB)."""
    out = np.zeros((images.n, sum(s * s for s in SCALES)), np.float32)
    for pos, pix in images.chunks():
        g = neardup.gray(pix)
        rows, cols = _area_matrix(g.shape[1], SCALES[-1]), _area_matrix(g.shape[2], SCALES[-1])
        fine = rows @ g @ cols.T  # (P, 16, 16)
        parts = []
        for s in SCALES:
            k = SCALES[-1] // s
            x = fine.reshape(len(g), s, k, s, k).mean(axis=(2, 4)).reshape(len(g), -1)
            x = x - x.mean(axis=1, keepdims=True)
            parts.append(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6) / np.sqrt(len(SCALES)))
        out[pos] = np.concatenate(parts, axis=1)
    return out


def nearest(
    queries: np.ndarray, refs: np.ndarray, allowed, dims: int = 32, candidates: int = 8, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """(cosine distance, index into `refs`) of each query's nearest reference that `allowed(q_rows,
    r_idx) -> bool (Q, C)` permits (e.g. another split), searched among the `candidates` nearest in
    a `dims`-dimensional PCA projection; distance 2 and index -1 where none is allowed."""
    import torch

    z_q, z_r = queries, refs
    if refs.shape[1] > dims and len(refs) > dims:
        from sklearn.decomposition import PCA

        pca = PCA(dims, svd_solver="randomized", random_state=0).fit(refs[:: max(1, len(refs) // 20000)])
        z_q, z_r = pca.transform(queries).astype(np.float32), pca.transform(refs).astype(np.float32)
    c = min(candidates, len(refs))
    rt = torch.from_numpy(np.ascontiguousarray(z_r)).T
    dist, index = np.full(len(queries), 2.0), np.full(len(queries), -1, np.int64)
    for lo in range(0, len(queries), chunk):
        rows = np.arange(lo, min(lo + chunk, len(queries)))
        cand = (torch.from_numpy(np.ascontiguousarray(z_q[rows])) @ rt).topk(c, dim=1).indices.numpy()
        exact = np.einsum("qd,qcd->qc", queries[rows], refs[cand])
        exact = np.where(allowed(rows, cand), exact, -np.inf)
        best = np.argmax(exact, axis=1)
        ok = np.isfinite(exact[np.arange(len(rows)), best])
        dist[rows[ok]] = np.clip(1.0 - exact[np.arange(len(rows)), best][ok], 0.0, 2.0)
        index[rows[ok]] = cand[np.arange(len(rows)), best][ok]
    return dist, index


def threshold(desc: np.ndarray, factor: float, k: int, sample: int = 5000) -> tuple[float, float]:
    """(`factor` x the median cosine distance from a sample to its `k`-th nearest other sample, that
    median). The k-th, not the nearest: where duplicates are common (an icon theme draws each icon
    at several sizes, and aliases it under several names) the median nearest distance is 0, so
    cleanlab's rule on the nearest alone would suspect nothing. Estimated on at most `sample` rows
    (a fixed draw), against all."""
    import torch

    if len(desc) <= k:
        return 0.0, 0.0
    rows = np.sort(np.random.default_rng(0).permutation(len(desc))[:sample])
    all_t = torch.from_numpy(np.ascontiguousarray(desc)).T
    kth = []
    for lo in range(0, len(rows), 1024):
        part = rows[lo : lo + 1024]
        sim = torch.from_numpy(desc[part]) @ all_t
        sim[torch.arange(len(part)), torch.from_numpy(part)] = -torch.inf  # not oneself
        kth.append(1.0 - sim.topk(k, dim=1).values[:, -1].double().numpy())
    median = float(np.median(np.concatenate(kth)))
    return factor * median, median
