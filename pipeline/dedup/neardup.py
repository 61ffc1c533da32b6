"""Near-duplicate detection: pure kernels over uint8 (N, H, W, C) batches.

A `Cascade` is the detector, each step chosen by measurement on Fashion-MNIST
(bench/bench_split.py, README "Leak-safe split"):

1. **Descriptors at enumerated offsets.** Each image (grey, or luma for RGB) is sampled on a
   small Gaussian-weighted lattice, and again with the lattice displaced by every offset
   (dy, dx), |dy|, |dx| <= max_shift. If image a is image b moved by s, a's descriptor at
   offset s equals b's at offset 0: a shifted copy is found at its alignment. Shift-invariant
   summaries (Fourier magnitudes, centroid alignment) ranked the true original behind other
   near-identical garments too often.
2. **Candidate search** (`CoarseIndex`): an inverted file. Offset-0 descriptors sit in the
   cell of their nearest k-means centroid; each offset's query probes its nearest cells and
   keeps the `neighbours` nearest members within `radius`. About 2*sqrt(N) cells: work grows
   as N^1.5 at worst with a small constant, never N^2; memory is the offset-0 descriptors
   plus one chunk of pixels.
3. **Verification** at each offset found, after a brightness/contrast fit: `rms` (the
   root-mean-square residual) and `peak` (the largest residual once smoothed by 1 px, with
   either image optionally blurred first, which absorbs resampling and JPEG blur), both in
   0..255 units. A copy leaves a small or an unstructured residual; a different garment of the
   same silhouette leaves a large local one.

`components` joins accepted pairs (union-find). Everything runs with BLAS on one thread.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd

Chunk = tuple[np.ndarray, np.ndarray]  # (positions, uint8 pixels (P, H, W, C))
PRESCREEN = 5.0  # see Cascade.verify

# ---------------------------------------------------------------- small image kernels


def one_blas_thread() -> contextlib.AbstractContextManager:
    """BLAS on one thread: the many small products here run ~30x faster on a busy machine
    than with a thread pool, and sums are ordered the same on any machine (determinism)."""
    try:
        from threadpoolctl import threadpool_limits  # ships with scikit-learn
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def gray(pixels: np.ndarray) -> np.ndarray:
    """uint8 (P, H, W, C) -> float32 (P, H, W) intensity in 0..255 (ITU-R 601 luma for RGB,
    the channel JPEG keeps at full resolution)."""
    x = np.asarray(pixels, dtype=np.float32)
    if x.ndim == 4 and x.shape[-1] == 3:
        return x @ np.array([0.299, 0.587, 0.114], np.float32)
    return x.mean(-1) if x.ndim == 4 else x


CHROMA_BLUR = 2.0  # px: the scale at which near-duplicate colours are compared ...
CHROMA_PEAK = 50.0  # ... and the largest smoothed residual (0..255) of a copy: JPEG q75 copies reached 15
#                     (64x64 shapes on noise) and 37 (saturated 32x32 random fields); another background
#                     colour behind the same shape scored 100-107, a red vs a green square of one luma 228


def chroma(pixels: np.ndarray) -> np.ndarray:
    """uint8 (P, H, W, 3) -> float32 (P, H, W, 2) opponent colours R - G and (R + G) / 2 - B."""
    x = np.asarray(pixels, dtype=np.float32)
    return np.stack([x[..., 0] - x[..., 1], 0.5 * (x[..., 0] + x[..., 1]) - x[..., 2]], axis=-1)


def chroma_peak(a: np.ndarray, b: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    """Largest |residual| (0..255) of the opponent colours of RGB pairs (P, H, W, 3), a being b
    moved by `offset`, on the overlap blurred by CHROMA_BLUR px. Only a scale is fitted (a
    brightness or contrast change scales the chroma), in [0.8, 1.25]: no offset, since another
    background colour is another image, not a copy."""
    h, w = a.shape[1:3]
    ya, xa, yb, xb = _overlap(h, w, *offset)
    ca, cb = chroma(a[:, ya, xa]), chroma(b[:, yb, xb])
    peaks = []
    for c in range(ca.shape[-1]):
        x, y = blur(ca[..., c], CHROMA_BLUR), blur(cb[..., c], CHROMA_BLUR)
        scale = np.clip((x * y).sum((1, 2)) / np.maximum((y * y).sum((1, 2)), 1e-3), 0.8, 1.25)
        peaks.append(np.abs(x - scale[:, None, None] * y).max((1, 2)))
    return np.max(peaks, axis=0)


def _gauss_rows(n_out: int, length: int, sigma: float, centres: np.ndarray) -> np.ndarray:
    """(n_out, length) Gaussian sampling weights at `centres`, each row summing to 1."""
    d = np.arange(length, dtype=np.float64)[None, :] - centres[:, None]
    w = np.exp(-0.5 * (d / max(sigma, 1e-3)) ** 2)
    w[w < 1e-8] = 0.0  # denormal float32 weights slow matrix products tens of times
    w[w.sum(1) == 0, :] = 1.0
    return (w / w.sum(1, keepdims=True)).astype(np.float32)


@functools.lru_cache(maxsize=256)
def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) Gaussian blur along one axis, cut at 3 sigma, edge pixels replicated."""
    r = max(1, int(math.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    m = np.zeros((n, n))
    for i in range(n):
        for t, wt in zip(range(i - r, i + r + 1), k):
            m[i, min(max(t, 0), n - 1)] += wt
    return (m / m.sum(1, keepdims=True)).astype(np.float32)


def blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (P, h, w), as two large matrix products."""
    if sigma <= 0:
        return x
    p, h, w = x.shape
    x = (x.reshape(p * h, w) @ _blur_matrix(w, sigma).T).reshape(p, h, w)
    x = np.ascontiguousarray(x.transpose(0, 2, 1)).reshape(p * w, h) @ _blur_matrix(h, sigma).T
    return np.ascontiguousarray(x.reshape(p, w, h).transpose(0, 2, 1))


def window_offsets(max_shift: int, half: bool = False) -> list[tuple[int, int]]:
    """(0, 0), then every (dy, dx) with |dy|, |dx| <= max_shift (only one of s, -s if half)."""
    r = range(-max_shift, max_shift + 1)
    return [(0, 0)] + [(dy, dx) for dy in r for dx in r if (dy, dx) > (0, 0) or (not half and (dy, dx) < (0, 0))]


def _overlap(h: int, w: int, dy: int, dx: int) -> tuple[slice, slice, slice, slice]:
    """Slices so that a[ya, xa] lines up with b[yb, xb] when a is b moved by (dy, dx)."""
    return (
        slice(max(0, dy), h + min(0, dy)),
        slice(max(0, dx), w + min(0, dx)),
        slice(max(0, -dy), h + min(0, -dy)),
        slice(max(0, -dx), w + min(0, -dx)),
    )


# ---------------------------------------------------------------- descriptors


@dataclass(frozen=True)
class Descriptor:
    """A grey image sampled on a lattice displaced by an offset, as one vector.

    kind "thumb": Gaussian-weighted samples on a grid x grid lattice (at most one per pixel
    of the side) covering `span` of the image, mean-centred and scaled to unit norm
    (brightness and contrast drop out).
    kind "phash": a perceptual hash: the signs of the 8x8 lowest DCT coefficients (DC left
    out) of a 16x16 sampling, relative to their median, as +-1/sqrt(63) (squared distance
    = 4 x Hamming / 63), so the same index searches it.
    """

    kind: str = "thumb"
    grid: int = 10
    sigma: float = 0.07  # Gaussian width as a fraction of the side (thumb)
    span: float = 0.65  # fraction of the side the lattice covers ...
    margin: int = 2  # ... keeping this many px (the largest offset) plus sigma off the edges

    def _lattice(self, side: int, offsets: list[int]) -> tuple[np.ndarray, int]:
        n = 16 if self.kind == "phash" else min(self.grid, side)
        sigma = max(self.sigma * side, 0.5) if self.kind == "thumb" else 0.5
        # On tiny images (8x8 digits) a lattice moved by `margin` would sample outside the
        # image; keep it on the part every offset sees.
        extent = min(self.span * (side - 1), max(side - 1 - 2 * self.margin - sigma, 1.0))
        sigma = max(sigma, 0.5 * extent / max(n - 1, 1))
        base = (side - 1) / 2 + np.linspace(-0.5, 0.5, n) * extent
        rows = [_gauss_rows(n, side, sigma, base + o) for o in offsets]
        return np.concatenate(rows), n  # (len(offsets) * n, side)

    def compute(self, g: np.ndarray, offsets: list[tuple[int, int]]) -> np.ndarray:
        """(P, H, W) grey -> (len(offsets), P, dim) float32."""
        p, h, w = g.shape
        dys, dxs = sorted({o[0] for o in offsets}), sorted({o[1] for o in offsets})
        my, ny = self._lattice(h, dys)
        mx, nx = self._lattice(w, dxs)
        g = g - g.mean((1, 2), keepdims=True)
        # two large products (P*H, W) x (W, X) and (P*X, H) x (H, Y), not P small ones
        t = (g.reshape(p * h, w) @ mx.T).reshape(p, h, -1).transpose(0, 2, 1)
        t = (np.ascontiguousarray(t).reshape(-1, h) @ my.T).reshape(p, -1, my.shape[0])
        samp = t.transpose(0, 2, 1).reshape(p, len(dys), ny, len(dxs), nx)
        return np.stack([self._finish(samp[:, dys.index(dy), :, dxs.index(dx), :]) for dy, dx in offsets])

    def _finish(self, s: np.ndarray) -> np.ndarray:
        p = len(s)
        if self.kind == "phash":
            d = _dct_matrix(16)[:8]
            c = (s.reshape(p * 16, 16) @ d.T).reshape(p, 16, 8).transpose(0, 2, 1)
            c = (np.ascontiguousarray(c).reshape(p * 8, 16) @ d.T).reshape(p, 8, 8)
            c = c.transpose(0, 2, 1).reshape(p, 64)[:, 1:]
            bits = c > np.median(c, axis=1, keepdims=True)
            return np.where(bits, 1.0, -1.0).astype(np.float32) / math.sqrt(63)
        f = s.reshape(p, -1)
        f = f - f.mean(1, keepdims=True)
        return (f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-6)).astype(np.float32)


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    m = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m.astype(np.float32)


# ---------------------------------------------------------------- candidate search


def _kmeans(x: np.ndarray, k: int, iters: int = 8) -> np.ndarray:
    """Lloyd's k-means from evenly spaced starting points (deterministic)."""
    cent = x[np.linspace(0, len(x) - 1, k).astype(int)].copy()
    for _ in range(iters):
        lab = _nearest(x, cent, 1)[:, 0]
        sums = np.zeros_like(cent)
        np.add.at(sums, lab, x)
        counts = np.bincount(lab, minlength=k)
        filled = counts > 0
        cent[filled] = sums[filled] / counts[filled, None]
    return cent


def _nearest(x: np.ndarray, cent: np.ndarray, k: int, chunk: int = 16384) -> np.ndarray:
    """Indices of the k nearest centroids of each row (k small: repeated argmin)."""
    out = np.empty((len(x), k), np.int64)
    c2 = (cent * cent).sum(1)
    for a in range(0, len(x), chunk):
        d = c2[None, :] - 2 * x[a : a + chunk] @ cent.T
        rows = np.arange(len(d))
        for j in range(min(k, len(cent))):
            out[a : a + chunk, j] = best = d.argmin(1)
            d[rows, best] = np.inf
    return out


class CoarseIndex:
    """Inverted file over the offset-0 descriptors: radius + k-nearest queries, no all-pairs.

    Cells are k-means cells in the top `dims` principal directions of a sample (cheap to
    assign); distances inside the probed cells are exact, in the full descriptor.
    """

    def __init__(self, base: np.ndarray, cells: int | None = None, sample: int = 20000, dims: int = 24):
        n = len(base)
        cells = cells or max(1, min(n, int(round(2 * math.sqrt(n)))))
        sub = base[:: max(1, n // sample)]
        self.mean = sub.mean(0)
        self.proj = np.linalg.svd(sub - self.mean, full_matrices=False)[2][:dims].T.copy()
        self.cent = _kmeans(self._reduce(sub), cells)
        lab = _nearest(self._reduce(base), self.cent, 1)[:, 0]
        self.order = np.argsort(lab, kind="stable")
        self.base = base[self.order]  # cell-contiguous
        self.norm = (self.base * self.base).sum(1)
        self.starts = np.searchsorted(lab[self.order], np.arange(cells + 1))
        self.compared = 0  # descriptor distances computed by queries (for the scale test)

    def _reduce(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) @ self.proj).astype(np.float32)

    def query(
        self, q: np.ndarray, radius: float, neighbours: int, probes: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query row, base index, distance) for up to `neighbours` base rows within radius."""
        probes = min(probes, len(self.cent))
        cells = _nearest(self._reduce(q), self.cent, probes)
        qi = np.repeat(np.arange(len(q)), probes)
        ci = cells.ravel()
        by = np.argsort(ci, kind="stable")
        qi, ci = qi[by], ci[by]
        bounds = np.searchsorted(ci, np.arange(len(self.cent) + 1))
        qnorm = (q * q).sum(1)
        out_q, out_b, out_d = [], [], []
        r2 = radius * radius
        for c in np.flatnonzero(np.diff(bounds)):
            lo, hi = self.starts[c], self.starts[c + 1]
            if hi == lo:
                continue
            rows = qi[bounds[c] : bounds[c + 1]]
            self.compared += len(rows) * (hi - lo)
            d2 = qnorm[rows, None] + self.norm[None, lo:hi] - 2 * (q[rows] @ self.base[lo:hi].T)
            r, k = np.nonzero(d2 <= r2)
            out_q.append(rows[r])
            out_b.append(k + lo)
            out_d.append(d2[r, k])
        if not out_q:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        qr, b, d2 = np.concatenate(out_q), np.concatenate(out_b), np.concatenate(out_d)
        o = np.lexsort((b, d2, qr))  # per query, nearest first; ties by index
        qr, b, d2 = qr[o], b[o], d2[o]
        first = np.r_[0, np.flatnonzero(np.diff(qr)) + 1]
        rank = np.arange(len(qr)) - np.repeat(first, np.diff(np.r_[first, len(qr)]))
        keep = rank < neighbours
        return qr[keep], self.order[b[keep]], np.sqrt(np.maximum(d2[keep], 0))


class FaissIndex:
    """The same queries on faiss's inverted file (`IndexIVFFlat`, exact distances in the probed
    cells), for `split.near_duplicates.index: faiss`: the kept ANN library in place of the
    hand-written cells (bench/bench_neardup_index.py compares them)."""

    def __init__(self, base: np.ndarray, cells: int | None = None, seed: int = 0):
        import faiss

        n, d = base.shape
        cells = cells or max(1, min(n, int(round(2 * math.sqrt(n)))))
        self.index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, cells)
        self.index.cp.seed = seed  # its k-means draws its starting points from this
        self.index.cp.min_points_per_centroid = 1  # small sets: no warning, same cells
        self.index.train(np.ascontiguousarray(base))
        self.index.add(np.ascontiguousarray(base))
        self.cells, self.compared = cells, 0

    def query(
        self, q: np.ndarray, radius: float, neighbours: int, probes: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query row, base index, distance) for up to `neighbours` base rows within radius."""
        self.index.nprobe = min(probes, self.cells)
        d2, idx = self.index.search(np.ascontiguousarray(q, dtype=np.float32), neighbours)
        qr, k = np.nonzero((idx >= 0) & (d2 <= radius * radius))
        return qr.astype(np.int64), idx[qr, k].astype(np.int64), np.sqrt(np.maximum(d2[qr, k], 0))


INDEXES = {"own": CoarseIndex, "faiss": FaissIndex}


# ---------------------------------------------------------------- verification


def _fit_residual(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Residual of a after the least-squares fit alpha * b + beta, divided by sqrt(alpha) so
    that swapping a and b gives the same magnitudes; alpha is kept in [0.5, 2]."""
    am = a - a.mean((1, 2), keepdims=True)
    bm = b - b.mean((1, 2), keepdims=True)
    vb = (bm * bm).sum((1, 2))
    alpha = np.where(vb > 1e-3, (am * bm).sum((1, 2)) / np.maximum(vb, 1e-3), 1.0)
    alpha = np.clip(alpha, 0.5, 2.0).astype(np.float32)
    return (am - alpha[:, None, None] * bm) / np.sqrt(alpha)[:, None, None]


def residual_scores(
    a: np.ndarray, b: np.ndarray, offset: tuple[int, int], blurs: tuple[float, ...] = (), smooth: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """(rms, peak) dissimilarity of grey pairs (P, H, W), a being b moved by `offset`.

    Both are in 0..255 units, on the overlap, after a brightness and contrast fit.
    rms: root-mean-square residual. peak: the largest |residual| once smoothed by a Gaussian
    of `smooth` px (noise averages out, a local difference does not), minimised over
    blurring a or b by each of `blurs` px first (resampling and JPEG blur one copy).
    """
    h, w = a.shape[1:]
    ya, xa, yb, xb = _overlap(h, w, *offset)
    a, b = a[:, ya, xa], b[:, yb, xb]
    res = _fit_residual(a, b)
    rms = np.sqrt((res * res).mean((1, 2)))
    peak = np.abs(blur(res, smooth)).max((1, 2))
    for sa, sb in [(s, 0.0) for s in blurs] + [(0.0, s) for s in blurs]:
        res = _fit_residual(blur(a, sa), blur(b, sb))
        peak = np.minimum(peak, np.abs(blur(res, smooth)).max((1, 2)))
    return rms, peak


# ---------------------------------------------------------------- the detector


@dataclass(frozen=True)
class Cascade:
    """A configured cascade: descriptor -> index search -> verification at the found offset.

    A pair is accepted when its rms residual is <= `rms_threshold` (nearly identical, or a
    small local edit) or its blur-matched peak residual is <= `peak_threshold` (noise,
    JPEG, resampling); either threshold may be None (rule off).
    """

    descriptor: Descriptor
    max_shift: int = 2
    radius: float = 0.12  # candidate radius in descriptor space
    neighbours: int = 4  # candidates kept per query
    probes: int = 2  # index cells probed per query
    index: str = "own"  # own (CoarseIndex) | faiss (FaissIndex)
    both_ways: bool = True  # query a at s and b at -s: twice the queries, fewer misses
    rms_threshold: float | None = 6.5
    peak_threshold: float | None = 12.0
    blurs: tuple[float, ...] = (0.6, 0.9)
    batch: int = 4096  # images per feature chunk / pairs per verification batch

    def candidates(
        self,
        images: "Images",
        allowed: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
        progress: Callable[[Iterable], Iterable] = lambda it: it,
    ) -> pd.DataFrame:
        """Candidates (i < j, dy, dx, dist): image i may be image j moved by (dy, dx).

        A pair can come with several offsets; all are kept for verification. The two passes over
        the chunks (descriptors at offset 0, then the queries at every offset) run on
        `images.executor`.
        """
        from pipeline.core.executor import ordered_map

        offsets = window_offsets(self.max_shift, half=not self.both_ways)
        workers = 1 if images.executor == "local" else 0
        base = None
        job = (self.descriptor, images.take)
        for pos, f in zip(images.spans, ordered_map(_describe, images.spans, job, workers, images.executor, _blas1)):
            if base is None:
                base = np.zeros((images.n, f.shape[1]), np.float32)
            base[pos] = f
        if base is None or images.n < 2:
            return pd.DataFrame({c: np.zeros(0, np.int64) for c in ("i", "j", "dy", "dx")}).assign(
                dist=np.zeros(0, np.float32)
            )
        index = INDEXES[self.index](base)
        job = (self.descriptor, images.take, offsets, index, self.radius, self.neighbours, self.probes)
        queries = ordered_map(_query, images.spans, job, workers, images.executor, _blas1)
        found = [pd.DataFrame({"i": [], "j": [], "dy": [], "dx": [], "dist": []})]
        for pos, (qr, b, d) in progress(zip(images.spans, queries)):
            k, i = np.divmod(qr, len(pos))
            i = pos[i]
            keep = i != b
            if allowed is not None:
                keep &= allowed(i, b)
            off = np.asarray(offsets)[k[keep]]
            found.append(pd.DataFrame({"i": i[keep], "j": b[keep], "dy": off[:, 0], "dx": off[:, 1], "dist": d[keep]}))
        pairs = pd.concat(found, ignore_index=True)
        pairs = pairs.astype({"i": np.int64, "j": np.int64, "dy": np.int64, "dx": np.int64, "dist": np.float32})
        swap = (pairs["i"] > pairs["j"]).to_numpy()  # (j, i, -s) is the same candidate
        ij = pairs[["i", "j"]].to_numpy()
        pairs[["i", "j"]] = np.where(swap[:, None], ij[:, ::-1], ij)
        pairs.loc[swap, ["dy", "dx"]] = -pairs.loc[swap, ["dy", "dx"]].to_numpy()
        return (
            pairs.sort_values(["i", "j", "dy", "dx", "dist"], kind="stable")
            .drop_duplicates(["i", "j", "dy", "dx"])
            .reset_index(drop=True)
        )

    def verify(self, cand: pd.DataFrame, take: Callable[[np.ndarray], np.ndarray]) -> pd.DataFrame:
        """Accepted pairs (i, j, dy, dx, rms, peak), one row per pair at its best offset.

        The unblurred peak is computed first, and only candidates whose unblurred peak is
        within PRESCREEN x peak_threshold try the blurred variants: on Fashion-MNIST copies
        saved at 0.9x size the unblurred peak reached 39 (3.3x the threshold), while most
        distinct candidates score far higher.
        """
        rms = np.full(len(cand), np.inf, np.float32)
        peak = np.full(len(cand), np.inf, np.float32)
        off = cand[["dy", "dx"]].to_numpy()
        order = np.lexsort((off[:, 1], off[:, 0]))  # batches of one offset: few, large calls
        bounds = np.flatnonzero(np.r_[True, (np.diff(off[order], axis=0) != 0).any(1), True])
        bounds = bounds if len(cand) else np.zeros(1, np.int64)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            dy, dx = off[order[lo]]
            for a in range(lo, hi, self.batch):
                m = order[a : min(hi, a + self.batch)]
                pa, pb = take(cand["i"].to_numpy()[m]), take(cand["j"].to_numpy()[m])
                r, pk = self._scores(gray(pa), gray(pb), (dy, dx))
                if pa.ndim == 4 and pa.shape[-1] == 3:
                    # colour: the colours must match too (a red and a green shape of one luma on
                    # one background are the same grey image). Compared at a coarse scale, since
                    # JPEG halves and quantises the chroma: a pair that differs there scores inf
                    off_colour = chroma_peak(pa, pb, (dy, dx)) > CHROMA_PEAK
                    r[off_colour], pk[off_colour] = np.inf, np.inf
                rms[m], peak[m] = r, pk
        ok = np.zeros(len(cand), bool)
        if self.rms_threshold is not None:
            ok |= rms <= self.rms_threshold
        if self.peak_threshold is not None:
            ok |= peak <= self.peak_threshold
        out = cand[["i", "j", "dy", "dx"]].assign(rms=rms, peak=peak)[ok]
        return (
            out.sort_values(["i", "j", "rms", "peak", "dy", "dx"], kind="stable")
            .drop_duplicates(["i", "j"])
            .reset_index(drop=True)
        )

    def _scores(self, ga: np.ndarray, gb: np.ndarray, offset: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(rms, peak) of grey pairs; the blurred peak only where the plain one is close."""
        r, pk = residual_scores(ga, gb, offset)
        if self.peak_threshold is not None and self.blurs:
            again = (
                (pk > self.peak_threshold)
                & (pk <= PRESCREEN * self.peak_threshold)
                & ~(r <= (self.rms_threshold or -1))
            )
            if again.any():
                pk[again] = residual_scores(ga[again], gb[again], offset, self.blurs)[1]
        return r, pk

    def find(
        self,
        images: "Images",
        allowed: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
        progress: Callable[[Iterable], Iterable] = lambda it: it,
    ) -> pd.DataFrame:
        """Verified pairs (i < j, dy, dx, rms, peak) among `images`, optionally only those
        `allowed(i, j)` (the post-hoc checks look across splits only)."""
        with one_blas_thread():
            cand = self.candidates(images, allowed, progress)
            return self.verify(cand, images.take)


def _describe(job: tuple, pos: np.ndarray) -> np.ndarray:
    """A chunk's offset-0 descriptors (an executor task: reads its own pixels)."""
    descriptor, take = job
    return descriptor.compute(gray(take(pos)), [(0, 0)])[0]


def _query(job: tuple, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A chunk's candidates at every offset: (query row, base index, distance) from the index."""
    descriptor, take, offsets, index, radius, neighbours, probes = job
    feats = descriptor.compute(gray(take(pos)), offsets)
    return index.query(feats.reshape(-1, feats.shape[-1]), radius, neighbours, probes)


_LIMITS = []


def _blas1() -> None:
    """An executor worker's initializer: BLAS on one thread for the worker's life (as `find`)."""
    _LIMITS.append(one_blas_thread())


# ---------------------------------------------------------------- union-find


def components(n: int, links: Iterable[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Connected-component label (the smallest member index) of each of n nodes."""
    parent = np.arange(n)

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in links:
        for x, y in zip(np.asarray(a).tolist(), np.asarray(b).tolist()):
            rx, ry = root(x), root(y)
            if rx != ry:
                parent[max(rx, ry)] = min(rx, ry)
    return np.array([root(x) for x in range(n)], dtype=np.int64)


class Images:
    """Pixels addressed by position 0..n-1, read in bounded chunks: `spans` are the positions of
    each chunk (the feature passes walk them in order), `take(positions)` reads pixels (a chunk,
    or a few at random for verification). `executor` (`base.executor`) is where the feature
    passes run: here, or on Ray's workers, which read their chunks through `take` themselves
    (paths every node sees) and get the same chunks, so the same bytes."""

    def __init__(
        self, n: int, spans: list[np.ndarray], take: Callable[[np.ndarray], np.ndarray], executor: str = "local"
    ):
        self.n, self.spans, self.take, self.executor = n, spans, take, executor

    def chunks(self) -> Iterator[Chunk]:
        for pos in self.spans:
            yield pos, self.take(pos)

    @classmethod
    def from_array(cls, pixels: np.ndarray, chunk: int = 8192, executor: str = "local") -> "Images":
        spans = [np.arange(a, min(a + chunk, len(pixels))) for a in range(0, len(pixels), chunk)]
        return cls(len(pixels), spans, lambda pos: pixels[np.asarray(pos)], executor)

    def subset(self, keep: np.ndarray) -> "Images":
        """The images at positions `keep`, renumbered 0..len(keep)-1."""
        keep = np.asarray(keep)
        where = np.full(self.n, -1)
        where[keep] = np.arange(len(keep))
        spans = [where[pos][where[pos] >= 0] for pos in self.spans]
        return Images(
            len(keep), [s for s in spans if len(s)], lambda pos: self.take(keep[np.asarray(pos)]), self.executor
        )


def limited_components(
    n: int, fixed: Iterable[tuple[np.ndarray, np.ndarray]], ranked: tuple[np.ndarray, np.ndarray], limit: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`components` under a size limit: the `fixed` links always join; the `ranked` links (strongest
    first) join only while the merged component holds at most `limit[k]` nodes (link k's limit), so a
    chain of near duplicates cannot swallow a class: it is cut at its weakest links. (component label
    per node, as `components`; which ranked links were cut)."""
    parent = components(n, fixed)
    size = np.bincount(parent, minlength=n)

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    cut = np.zeros(len(ranked[0]), bool)
    for k, (x, y) in enumerate(zip(np.asarray(ranked[0]).tolist(), np.asarray(ranked[1]).tolist())):
        rx, ry = root(x), root(y)
        if rx == ry:
            continue
        if size[rx] + size[ry] > limit[k]:
            cut[k] = True
            continue
        lo, hi = min(rx, ry), max(rx, ry)
        parent[hi], size[lo] = lo, size[lo] + size[hi]
    return np.array([root(x) for x in range(n)], dtype=np.int64), cut
