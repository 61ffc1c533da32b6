"""The quality gate: set metrics and per-sample admission over classifier features.

The judges are classifiers trained on real data only (the oof stage's fold models);
`features` is their L2-normalised penultimate embeddings side by side, the same space as
`data/oof/embeddings.npy`, and `judge_probs` their mean softmax. On top of those arrays:

- `fid`: Fréchet distance between Gaussian fits (Heusel et al. 2017).
- `kid`: unbiased MMD^2 with the kernel (x.y / d + 1)^3, averaged over random subsets
  (Bińkowski et al. 2018); unbiased, so usable on the few samples of one class.
- `precision_recall`: k-NN manifolds (Kynkäänniemi et al. 2019): precision is the share of
  generated samples inside some real sample's k-NN ball, recall the reverse.
- `realism`: the same paper's per-sample realism score, max over real samples (the half with
  the smaller radii) of radius / distance; >= 1 means inside a typical real ball.

`assess` admits or rejects each sample, in this order of reasons: `copies_val_test`
(an exact pixel copy of, or closer than the holdout threshold to, a val/test image: always
checked), `copies_train` (the same against train), `off_label` (the judges' mean probability
of the conditioning label below tau), `off_manifold` (realism below the threshold).
The thresholds come from real data (`thresholds`): a low quantile of real train images'
distances to their nearest other train image, and a low quantile of real val images'
realism scores. All kernels are deterministic and bounded in memory (chunked distances).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

REASONS = ("copies_val_test", "copies_train", "off_label", "off_manifold")
BLOCK = 2**22  # distances per block (float64: 32 MB), so memory stays flat on 50k references


def features(models: list, x: np.ndarray) -> np.ndarray:
    """(N, folds * D) float32: each judge's L2-normalised embedding, side by side (as oof's)."""
    from pipeline.learn import inference

    out = []
    for m in models:
        e = inference.embed(m, x)
        out.append(e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12))
    return np.concatenate(out, axis=1).astype(np.float32)


def judge_probs(models: list, x: np.ndarray) -> np.ndarray:
    """(N, K) float32: the judges' mean softmax."""
    from pipeline.learn import inference

    return np.mean([inference.predict_proba(m, x) for m in models], axis=0).astype(np.float32)


def _dist_blocks(query: np.ndarray, ref: np.ndarray):
    """Yield (start, Euclidean distances of a block of query rows from there to every ref row).

    float64: an exact copy must come out at distance ~0, below any real-data threshold.
    """
    q, r = np.asarray(query, np.float64), np.asarray(ref, np.float64)
    r2 = (r * r).sum(1)
    rows = max(16, BLOCK // max(len(r), 1))
    for i in range(0, len(q), rows):
        qb = q[i : i + rows]
        d2 = (qb * qb).sum(1)[:, None] + r2[None, :] - 2.0 * qb @ r.T
        yield i, np.sqrt(np.maximum(d2, 0.0))


def knn_distance(query: np.ndarray, ref: np.ndarray, k: int = 1, self_index: np.ndarray | None = None) -> np.ndarray:
    """Distance of each query row to its k-th nearest ref row; `self_index[i]` (query i's own
    row in ref) is skipped. inf when ref has fewer than k candidates."""
    out = np.full(len(query), np.inf)
    if len(ref) - (self_index is not None) < k:
        return out
    for i, d in _dist_blocks(query, ref):
        if self_index is not None:
            d[np.arange(len(d)), self_index[i : i + len(d)]] = np.inf
        out[i : i + len(d)] = np.partition(d, k - 1, axis=1)[:, k - 1]
    return out


def radii(x: np.ndarray, k: int) -> np.ndarray:
    """Each sample's distance to its k-th nearest other sample (its k-NN ball)."""
    return knn_distance(x, x, k, self_index=np.arange(len(x)))


def _covered(query: np.ndarray, ref: np.ndarray, ref_radii: np.ndarray) -> np.ndarray:
    out = np.zeros(len(query), bool)
    for i, d in _dist_blocks(query, ref):
        out[i : i + len(d)] = (d <= ref_radii[None, :]).any(axis=1)
    return out


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float | None, float | None]:
    """Kynkäänniemi et al. 2019; None when a side has k samples or fewer."""
    if len(real) <= k or len(fake) <= k:
        return None, None
    precision = float(_covered(fake, real, radii(real, k)).mean())
    recall = float(_covered(real, fake, radii(fake, k)).mean())
    return precision, recall


def realism(real: np.ndarray, real_radii: np.ndarray, fake: np.ndarray) -> np.ndarray:
    """Realism score of each fake row against the real balls with radius <= the median radius."""
    keep = real_radii <= np.median(real_radii)
    r, rr = real[keep], real_radii[keep]
    out = np.zeros(len(fake))
    for i, d in _dist_blocks(fake, r):
        out[i : i + len(d)] = (rr[None, :] / np.maximum(d, 1e-12)).max(axis=1)
    return out


def fid(a: np.ndarray, b: np.ndarray) -> float | None:
    """Fréchet distance between Gaussian fits of two feature sets; None below 2 samples a side.

    tr sqrt(S1 S2) is taken as the sum of the square roots of the eigenvalues of the symmetric
    S1^1/2 S2 S1^1/2 (the same eigenvalues): exact, and stable where S1 S2 is singular.
    """
    if len(a) < 2 or len(b) < 2:
        return None
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0.0, None)).sum()
    value = float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * cross)
    return max(value, 0.0)


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 10, subset_size: int = 1000, seed: int = 0) -> float | None:
    """Unbiased MMD^2, cubic polynomial kernel, mean over `subsets` random subsets of equal size."""
    m = min(subset_size, len(a), len(b))
    if m < 2:
        return None
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x, y = a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        values.append(
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
        )
    return float(np.mean(values))


def subsample(n: int, cap: int, seed: int) -> np.ndarray:
    """Sorted indices of at most `cap` of `n` rows (all of them when n <= cap)."""
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


@dataclass
class Reference:
    """The real data the gate measures against (features from the same judges)."""

    train: np.ndarray  # real train features (what the generator learned from)
    train_labels: np.ndarray
    train_hashes: set[str]
    holdout: np.ndarray  # val + test features
    holdout_hashes: set[str]
    val: np.ndarray  # val features: calibration and the real-vs-real baseline
    val_labels: np.ndarray


@dataclass
class Thresholds:
    copy_train: float | None  # None: check off
    copy_val_test: float
    realism: float | None
    manifold: np.ndarray  # real train rows (indices) whose k-NN balls define the manifold
    manifold_radii: np.ndarray

    def as_dict(self) -> dict:
        r = lambda v: None if v is None else round(float(v), 6)  # noqa: E731
        return {"copy_train": r(self.copy_train), "copy_val_test": r(self.copy_val_test), "realism": r(self.realism)}


def thresholds(ref: Reference, cfg, seed: int) -> Thresholds:
    """Derive the admission thresholds from real data (`cfg`: params.SynthGate)."""
    q = subsample(len(ref.train), cfg.max_features, seed)
    nn = knn_distance(ref.train[q], ref.train, 1, self_index=q)
    nn = nn[np.isfinite(nn)]
    quant = lambda p: float(np.quantile(nn, p)) if len(nn) else 0.0  # noqa: E731
    manifold = subsample(len(ref.train), cfg.max_features, seed + 1)
    mr = radii(ref.train[manifold], cfg.pr_k)
    real_realism = realism(ref.train[manifold], mr, ref.val) if len(ref.val) else np.zeros(0)
    return Thresholds(
        copy_train=quant(cfg.copy_quantile) if cfg.copy_quantile > 0 else None,
        copy_val_test=quant(cfg.holdout_quantile),
        realism=(
            float(np.quantile(real_realism, cfg.realism_quantile))
            if cfg.realism_quantile > 0 and len(real_realism)
            else None
        ),
        manifold=manifold,
        manifold_radii=mr,
    )


def assess(
    ref: Reference,
    th: Thresholds,
    feats: np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray,
    hashes: list[str],
    tau: float,
) -> pd.DataFrame:
    """Per-sample scores and `reason` (the failed checks, ';'-joined, in REASONS order; '' = admitted)."""
    labels = np.asarray(labels, np.int64)
    p_label = probs[np.arange(len(labels)), labels] if len(labels) else np.zeros(0)
    nn_train = knn_distance(feats, ref.train)
    nn_holdout = knn_distance(feats, ref.holdout)
    real_score = realism(ref.train[th.manifold], th.manifold_radii, feats)
    checks = {
        "copies_val_test": np.array([h in ref.holdout_hashes for h in hashes], bool) | (nn_holdout <= th.copy_val_test),
        "copies_train": np.array([h in ref.train_hashes for h in hashes], bool)
        | ((nn_train <= th.copy_train) if th.copy_train is not None else False),
        "off_label": p_label < tau,
        "off_manifold": (real_score < th.realism) if th.realism is not None else np.zeros(len(feats), bool),
    }
    reason = [";".join(r for r in REASONS if checks[r][i]) for i in range(len(feats))]
    return pd.DataFrame(
        {
            "p_label": p_label.astype(np.float64),
            "pred_label_id": probs.argmax(1) if len(probs) else [],
            "nn_train_dist": nn_train,
            "nn_val_test_dist": nn_holdout,
            "realism": real_score,
            "reason": reason,
        }
    )


def set_metrics(real: np.ndarray, fake: np.ndarray, cfg, seed: int) -> dict:
    """FID, KID, precision and recall of `fake` against `real` (capped subsamples for the k-NN ones)."""
    r6 = lambda v: None if v is None else round(v, 6)  # noqa: E731
    rs, fs = subsample(len(real), cfg.max_features, seed), subsample(len(fake), cfg.max_features, seed + 1)
    p, r = precision_recall(real[rs], fake[fs], cfg.pr_k)
    return {
        "n": len(fake),
        "fid": r6(fid(real, fake)),
        "kid": r6(kid(real, fake, cfg.kid_subsets, cfg.kid_subset_size, seed)),
        "precision": r6(p),
        "recall": r6(r),
    }


def report(ref: Reference, sets: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str], cfg, seed: int) -> dict:
    """Set metrics of each named (features, labels) set against real train, overall and per
    class, next to real val's (`real_baseline`: what a perfect generator would score)."""
    sets = {**sets, "real_baseline": (ref.val, ref.val_labels)}
    out = {name: set_metrics(ref.train, f, cfg, seed) for name, (f, _) in sets.items()}
    out["per_class"] = {
        cname: {
            name: set_metrics(ref.train[ref.train_labels == c], f[y == c], cfg, seed) for name, (f, y) in sets.items()
        }
        for c, cname in enumerate(classes)
    }
    return out
