"""Suspected duplicates: the same picture re-rendered at another size, re-encoded or lightly edited,
which the near-duplicate cascade (neardup.py), built to verify pixel copies, does not join.

The content check is looser and cheaper: each image's intensity averaged down to 4x4, 8x8 and
16x16 (area averaging, so a 32 px and a 128 px rendering of one icon land on nearly the same
cells), each scale centred and scaled to unit norm, the three side by side (`descriptors`). Two
images are suspected when their cosine distance is at most `factor` x the median distance from a
sample to its nearest neighbour in the data (cleanlab's near_duplicate rule: the threshold comes
from the data's own spacing, not from a constant tuned on one dataset).

`Space` searches a PCA projection of the descriptors for candidates and re-scores them in full:
work grows as queries x references x 32, not x the full width.
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


class Space:
    """Descriptors and their `dims`-dimensional PCA projection, where candidates are searched; each
    candidate is then scored on the full descriptors (exact for the near pairs this is after)."""

    def __init__(self, desc: np.ndarray, dims: int = 32):
        self.desc, self.z = desc, desc
        if desc.shape[1] > dims and len(desc) > dims:  # PCA by the covariance's eigenvectors: 336 x 336, fast
            fit = desc[:: max(1, len(desc) // 20000)].astype(np.float64)
            mean = fit.mean(axis=0)
            _, vectors = np.linalg.eigh((fit - mean).T @ (fit - mean))
            self.z = ((desc - mean) @ vectors[:, -dims:]).astype(np.float32)

    def candidates(self, rows: np.ndarray, among: np.ndarray, c: int, chunk: int = 2048):
        """(row chunk, its `c` nearest of the rows `among` in the projection (indices into `among`),
        their full cosine distances), chunk by chunk."""
        import torch

        ref = torch.from_numpy(np.ascontiguousarray(self.z[among])).T
        c = min(c, len(among))
        for lo in range(0, len(rows), chunk):
            part = rows[lo : lo + chunk]
            cand = (torch.from_numpy(np.ascontiguousarray(self.z[part])) @ ref).topk(c, dim=1).indices.numpy()
            yield part, cand, 1.0 - np.einsum("qd,qcd->qc", self.desc[part], self.desc[among[cand]])


def threshold(space: Space, factor: float, k: int, sample: int = 2000) -> tuple[float, float]:
    """(`factor` x the median cosine distance from a sample to its `k`-th nearest other sample, that
    median). The k-th, not the nearest: where duplicates are common (an icon theme draws each icon
    at several sizes, and aliases it under several names) the median nearest distance is 0, so
    cleanlab's rule on the nearest alone would suspect nothing. Exact, on all the descriptors, for
    at most `sample` rows (a fixed draw): in a projection, crowded data (Fashion-MNIST) put the
    k-th neighbour 3x too far."""
    import torch

    n = len(space.desc)
    if n <= k:
        return 0.0, 0.0
    rows = np.sort(np.random.default_rng(0).permutation(n)[:sample])
    everyone = torch.from_numpy(np.ascontiguousarray(space.desc)).T
    kth = []
    for lo in range(0, len(rows), 512):
        part = rows[lo : lo + 512]
        sim = torch.from_numpy(space.desc[part]) @ everyone
        sim[torch.arange(len(part)), torch.from_numpy(part)] = -torch.inf  # not oneself
        kth.append(1.0 - sim.topk(k, dim=1).values[:, -1].double().numpy())
    median = float(np.median(np.concatenate(kth)))
    return factor * median, median


def within(space: Space, radius: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j), i < j, of rows within cosine distance `radius` among each row's `k` nearest."""
    n = len(space.desc)
    pairs = [np.zeros((0, 2), np.int64)]
    for part, cand, dist in space.candidates(np.arange(n), np.arange(n), k + 1):
        close = (dist <= radius) & (cand != part[:, None])
        i, j = np.broadcast_to(part[:, None], cand.shape)[close], cand[close]
        pairs.append(np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1))
    both = np.unique(np.concatenate(pairs), axis=0)
    return both[:, 0], both[:, 1]


def nearest(space: Space, queries: np.ndarray, refs: np.ndarray, allowed, candidates: int = 16):
    """(cosine distance, row) of each query row's nearest row of `refs` that `allowed(queries_chunk,
    rows (Q, C)) -> bool (Q, C)` permits (e.g. another split), among its `candidates` nearest; distance
    2 and row -1 where none is allowed."""
    dist, index = np.full(len(queries), 2.0), np.full(len(queries), -1, np.int64)
    at = {q: i for i, q in enumerate(queries.tolist())}
    for part, cand, d in space.candidates(queries, refs, candidates):
        rows = refs[cand]
        d = np.where(allowed(part, rows), d, np.inf)
        best = np.argmin(d, axis=1)
        ok = np.isfinite(d[np.arange(len(part)), best])
        where = np.array([at[q] for q in part.tolist()])
        dist[where[ok]] = np.clip(d[np.arange(len(part)), best][ok], 0.0, 2.0)
        index[where[ok]] = rows[np.arange(len(part)), best][ok]
    return dist, index
