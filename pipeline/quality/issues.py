"""Issue detectors for the clean stage: a tiny base class and a registry (cleanlab Datalab's shape).

A detector has a `name` and `find(df, oof) -> DataFrame` returning at least the columns
`is_<name>_issue` (bool) and `<name>_score` (0..1, lower = more severe), derived from the
name so they cannot drift. `df` is the oof manifest (with `probs`, after human patches);
`oof` holds the arrays (`probs` (N, K), `embeddings` (N, D)). Knobs come from
`clean.issues: {<name>: {...}}` and are validated by each detector's `Knobs` model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, ValidationError

from pipeline.core import schema
from pipeline.core.errors import PipelineError
from pipeline.core.registry import Knobs, Registry, describe
from pipeline.quality.image import COLUMNS as QUALITY


@dataclass
class OofArrays:
    probs: np.ndarray
    embeddings: np.ndarray


class Detector:
    name: str = ""
    Knobs = Knobs
    needs_labels = True  # False: found on every sample, the unlabeled pool included

    def __init__(self, knobs: dict | None = None):
        try:
            self.knobs = self.Knobs(**(knobs or {}))
        except ValidationError as e:
            raise PipelineError(describe(e, f"clean.issues.{self.name}")) from None

    @property
    def flag(self) -> str:
        return f"is_{self.name}_issue"

    @property
    def score(self) -> str:
        return f"{self.name}_score"

    def find(self, df: pd.DataFrame, oof: OofArrays) -> pd.DataFrame:
        raise NotImplementedError


REGISTRY: Registry[type[Detector]] = Registry("issue type (clean.issues)")
register = REGISTRY.register


def get(name: str, knobs: dict | None = None) -> Detector:
    return REGISTRY[name](knobs)


class LabelKnobs(Knobs):
    # low_self_confidence: cleanlab's estimate of how many labels are wrong (count.num_label_issues),
    # taken in order of self-confidence; it won on Fashion-MNIST with 10% injected noise (F1 0.93
    # vs 0.84 for prune_by_noise_rate) but undercounts on data as small as digits, where
    # prune_by_noise_rate does better (README, clean; bench/bench_clean.py)
    filter_by: Literal[
        "low_self_confidence",
        "low_normalized_margin",
        "prune_by_noise_rate",
        "prune_by_class",
        "both",
        "confident_learning",
        "predicted_neq_given",
    ] = "low_self_confidence"
    score_method: Literal["self_confidence", "normalized_margin", "confidence_weighted_entropy"] = "self_confidence"


@register
class LabelIssues(Detector):
    """cleanlab confident learning on out-of-fold probabilities; adds `suggested_label(_id)`."""

    name = "label"
    Knobs = LabelKnobs

    def find(self, df, oof):
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores

        y = df[schema.LABEL_ID].to_numpy(np.int64)
        issue = find_label_issues(y, oof.probs, filter_by=self.knobs.filter_by, n_jobs=1)
        score = get_label_quality_scores(y, oof.probs, method=self.knobs.score_method)
        suggested = oof.probs.argmax(1)
        return pd.DataFrame(
            {
                self.flag: issue,
                self.score: score.round(6),
                "suggested_label_id": suggested,
                "suggested_prob": oof.probs.max(1).round(6),
            }
        )


class OutlierKnobs(Knobs):
    k: int = Field(10, ge=1)  # neighbours in the embedding space
    fraction: float = Field(0.01, ge=0.0, le=1.0)  # the lowest-scoring fraction is flagged


@register
class Outliers(Detector):
    """cleanlab's `OutOfDistribution` score (mean cosine distance to the k nearest neighbours,
    exp(-d / median d)) on embeddings, with the neighbours found in one exact pass (`knn_cosine`)."""

    name = "outlier"
    Knobs = OutlierKnobs

    def find(self, df, oof):
        k = min(self.knobs.k, len(df) - 1)
        score = ood_scores(knn_cosine(oof.embeddings, k))
        cut = np.quantile(score, self.knobs.fraction) if self.knobs.fraction > 0 else -np.inf
        return pd.DataFrame({self.flag: score < cut, self.score: score.round(6)})


class NearDuplicateKnobs(Knobs):
    # split: the duplicate sets the split stage verified (pixel residuals after a brightness/contrast
    # fit, in 0..255 units, so the rule carries across image sizes and colours). pixels / embeddings:
    # besides those, a nearest neighbour within cosine `threshold`. A raw-pixel cosine does not carry
    # across data: on 64x64 RGB shapes over noisy backgrounds every image had a neighbour within 0.003;
    # embeddings are too close by design (neural collapse: on digits 5% of samples have a same-class
    # neighbour within 0.002, none a copy)
    features: Literal[schema.SPLIT, "pixels", "embeddings"] = "split"
    threshold: float = Field(0.003, ge=0.0, le=2.0)  # cosine distance at or below: a near duplicate


def knn_cosine(x: np.ndarray, k: int, chunk: int = 4096) -> np.ndarray:
    """(N, k) cosine distances from each row to its k nearest other rows, ascending; exact.

    What sklearn's brute-force `kneighbors` returns for cleanlab's default (cosine) search, by
    chunked matrix products. cleanlab's `OutOfDistribution.fit_score` runs that search twice (it
    calls `kneighbors` once to see whether the index is fitted); this is one pass, in float32
    products as sklearn's, and a test holds its scores to cleanlab's.
    """
    import torch

    z = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    out = np.empty((len(z), k), np.float64)
    for lo in range(0, len(z), chunk):
        hi = min(lo + chunk, len(z))
        sim = z[lo:hi] @ z.T
        sim[torch.arange(hi - lo), torch.arange(lo, hi)] = -torch.inf  # not oneself
        out[lo:hi] = (1.0 - sim.topk(k, dim=1).values.double()).clamp_min(0.0).numpy()
    return out


def ood_scores(distances: np.ndarray) -> np.ndarray:
    """cleanlab's outlier score of kNN distances: exp(-mean distance / its median), where
    distances within float error of 0 score exactly 1 (cleanlab.internal.outlier's two steps)."""
    from cleanlab.internal.outlier import correct_precision_errors, transform_distances_to_scores

    avg = distances.mean(axis=1)
    scale = float(max(np.median(avg), 100 * np.finfo(np.float64).eps))
    return correct_precision_errors(transform_distances_to_scores(avg, 1, scaling_factor=scale), avg, "cosine")


def nearest_cosine(
    x: np.ndarray, dims: int = 64, candidates: int = 16, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """(cosine distance, index) of each row's nearest other row. Above `dims` features (and rows)
    the `candidates` nearest in a PCA projection are re-scored in full: exact for near duplicates,
    close for the rest (the true nearest in 99% of rows), and 12 s on the 52k Fashion-MNIST train
    images where sklearn's brute-force kneighbors kept the clean stage busy for minutes."""
    import torch

    x = x.astype(np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    z = x
    if x.shape[1] > dims and len(x) > max(dims, candidates + 1):  # PCA needs dims <= rows
        from sklearn.decomposition import PCA

        z = PCA(dims, svd_solver="randomized", random_state=0).fit_transform(x).astype(np.float32)
        z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    c = min(candidates if z is not x else 1, len(x) - 1)
    zt, dist, index = torch.from_numpy(z).T, np.empty(len(x)), np.empty(len(x), np.int64)
    for lo in range(0, len(x), chunk):
        rows = np.arange(lo, min(lo + chunk, len(x)))
        sim = torch.from_numpy(z[rows]) @ zt
        sim[torch.arange(len(rows)), torch.from_numpy(rows)] = -torch.inf  # not oneself
        cand = sim.topk(c, dim=1).indices.numpy()
        exact = np.einsum("rd,rcd->rc", x[rows], x[cand])  # full-dimensional cosine of the candidates
        best = np.argmax(exact, axis=1)
        index[rows] = cand[np.arange(len(rows)), best]
        dist[rows] = np.clip(1.0 - exact[np.arange(len(rows)), best], 0.0, 2.0)
    return dist, index


@register
class NearDuplicates(Detector):
    """Samples with a duplicate in their own split: the split stage's verified duplicate sets
    (`dup_group`; groups are not duplicates), and with `features: pixels | embeddings` also a
    nearest neighbour within cosine `threshold`. Adds `near_duplicate_of` (the smallest other id
    of the set, or the neighbour, where flagged). The score is 0 for a verified duplicate, else the
    cosine distance to the nearest neighbour (1 with `features: split`), clipped to 1."""

    name = "near_duplicate"
    Knobs = NearDuplicateKnobs

    def find(self, df, oof):
        ids = df[schema.SAMPLE_ID].to_numpy().astype(object)
        dist, nearest = np.ones(len(df)), np.full(len(df), "", dtype=object)
        if self.knobs.features != "split":
            if self.knobs.features == "pixels":
                from pipeline.core import dataset

                feats = dataset.load_pixels(df).reshape(len(df), -1).astype(np.float32)
            else:
                feats = oof.embeddings
            for _, idx in df.groupby(schema.SPLIT, sort=True).indices.items():
                if len(idx) >= 2:
                    d, j = nearest_cosine(feats[idx])
                    dist[idx], nearest[idx] = d, ids[idx][j]
        flag = dist <= self.knobs.threshold
        if schema.DUP_GROUP in df:
            key = df[schema.SPLIT].astype(str) + "\x1f" + df[schema.DUP_GROUP].astype(str)
            verified = (df[schema.DUP_GROUP].notna() & key.duplicated(keep=False)).to_numpy()
            sets = pd.DataFrame({"key": key.to_numpy(), "id": ids}, index=np.arange(len(df)))[verified]
            sets = sets.sort_values("id")
            smallest = sets.groupby("key")["id"].transform("first")
            second = sets.groupby("key")["id"].transform(lambda v: v.iloc[1])
            other = np.full(len(df), "", dtype=object)
            other[sets.index] = np.where(sets["id"] == smallest, second, smallest)
            nearest = np.where(verified, other, nearest)
            dist[verified], flag = 0.0, flag | verified
        return pd.DataFrame(
            {
                self.flag: flag,
                self.score: np.clip(dist, 0, 1).round(6),
                "near_duplicate_of": np.where(flag, nearest, ""),
            }
        )


class ImbalanceKnobs(Knobs):
    threshold: float = Field(0.1, ge=0.0, le=1.0)  # flagged: class count < threshold * N / K


@register
class ClassImbalance(Detector):
    """Samples of a class much rarer than the mean class in their split (Datalab's rule)."""

    name = "class_imbalance"
    Knobs = ImbalanceKnobs

    def find(self, df, oof):
        k = oof.probs.shape[1]
        ratio = np.ones(len(df))
        for _, idx in df.groupby(schema.SPLIT, sort=True).indices.items():
            counts = np.bincount(df[schema.LABEL_ID].to_numpy()[idx], minlength=k)
            ratio[idx] = counts[df[schema.LABEL_ID].to_numpy()[idx]] / (len(idx) / k)
        return pd.DataFrame({self.flag: ratio < self.knobs.threshold, self.score: np.clip(ratio, 0, 1).round(6)})


# --- image quality: properties of the originals that ingest measured (pipeline/quality/image.py) ----
# cleanvision's definitions and default thresholds (its ImagePropertyIssueManager), held to cleanvision
# by tests/test_image_quality.py; docs/clean.md gives the rates they flag on the project's corpora.


class ImageIssue(Detector):
    """A detector of one image property: `score(df)` in 0..1 (lower = more severe), flagged below
    `knobs.threshold`. It needs no label and no model, so clean runs it on every sample, the pool
    included."""

    needs_labels = False

    def scores(self, q: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError

    def find(self, df, oof):
        missing = [c for c in QUALITY if c not in df]
        if missing:
            raise PipelineError(f"clean.issues.{self.name}: the manifest has no {missing[0]} column (re-run ingest)")
        q = df[list(QUALITY)].rename(columns=lambda c: c.removeprefix("quality_"))
        score = np.clip(self.scores(q), 0, 1)
        return pd.DataFrame({self.flag: score < self.threshold(q), self.score: np.round(score, 6)})

    def threshold(self, q: pd.DataFrame) -> float:
        return self.knobs.threshold


class DarkKnobs(Knobs):
    threshold: float = Field(0.32, ge=0.0, le=1.0)


class LightKnobs(Knobs):
    threshold: float = Field(0.05, ge=0.0, le=1.0)


class LowInformationKnobs(Knobs):
    # an entropy under 1 bit per band: near-blank images. Not cleanvision's 0.3 (3 bits of its joint-band entropy):
    # small images and flat-colour art have few tones, and it flagged 86% of digits, 15% of Fashion-MNIST and all
    # of Adwaita's 96 px symbolic icons; at 1 bit per band: 0, 0 and 1.7% (bench/bench_image_quality.py, docs/clean.md)
    threshold: float = Field(0.1, ge=0.0, le=1.0)
    normalizing_factor: float = Field(0.1, gt=0.0)


class BlurryKnobs(Knobs):
    threshold: float = Field(0.29, ge=0.0, le=1.0)
    normalizing_factor: float = Field(0.01, gt=0.0)
    color_threshold: float = Field(0.18, ge=0.0, le=1.0)


class AspectKnobs(Knobs):
    threshold: float = Field(0.35, ge=0.0, le=1.0)


@register
class Dark(ImageIssue):
    """The 99th percentile of brightness: an image whose brightest pixels are dim."""

    name, Knobs = "dark", DarkKnobs

    def scores(self, q):
        return q["brightness_p99"].to_numpy()


@register
class Light(ImageIssue):
    """1 - the 5th percentile of brightness: an image whose darkest pixels are near white."""

    name, Knobs = "light", LightKnobs

    def scores(self, q):
        return 1 - q["brightness_p5"].to_numpy()


@register
class LowInformation(ImageIssue):
    """`normalizing_factor` x the entropy of the pixel histogram (bits): few distinct values."""

    name, Knobs = "low_information", LowInformationKnobs

    def scores(self, q):
        return self.knobs.normalizing_factor * q["entropy"].to_numpy()


@register
class Blurry(ImageIssue):
    """1 - exp(-f x the spread of the edge filter) at most 64 px a side, plus the same of the grey
    histogram's spread where it passes `color_threshold` (a flat image with spread-out tones is
    not called blurry)."""

    name, Knobs = "blurry", BlurryKnobs

    def scores(self, q):
        f = self.knobs.normalizing_factor
        blur = 1 - np.exp(-f * q["blurriness"].to_numpy())
        spread = 1 - np.exp(-f * q["grey_hist_std"].to_numpy())
        return blur + np.where(spread <= self.knobs.color_threshold, 0.0, spread)


@register
class OddAspectRatio(ImageIssue):
    """min(w / h, h / w) of the original file."""

    name, Knobs = "odd_aspect_ratio", AspectKnobs

    def scores(self, q):
        w, h = q["width"].to_numpy(float), q["height"].to_numpy(float)
        return np.minimum(w / h, h / w)


class OddSizeKnobs(Knobs):
    iqr_factor: float = Field(3.0, gt=0.0)  # the fences: quartiles -/+ this x the interquartile range


@register
class OddSize(ImageIssue):
    """sqrt(w x h) of the original file against the data's own spread: 1 at the middle of the
    fences (quartiles -/+ `iqr_factor` x IQR), 0 at a fence's distance from it; flagged below 0.5
    (outside the fences), or, where every size is the same, any size but that one."""

    name, Knobs = "odd_size", OddSizeKnobs

    def scores(self, q):
        size = np.sqrt(q["width"].to_numpy(float) * q["height"].to_numpy(float))
        if not len(size):
            return size
        q1, q3 = np.percentile(size, [25, 75])
        low, high = q1 - self.knobs.iqr_factor * (q3 - q1), q3 + self.knobs.iqr_factor * (q3 - q1)
        gap = high - low
        return 1 - np.abs(size - (low + high) / 2) / (gap if gap > 0 else (low + high) / 2)

    def threshold(self, q):
        size = np.sqrt(q["width"].to_numpy(float) * q["height"].to_numpy(float))
        return 1.0 if len(size) and np.subtract(*np.percentile(size, [75, 25])) == 0 else 0.5


class GrayscaleKnobs(Knobs):
    # grey images are flagged only in a colour set: where at least this share of the images has colour
    min_colour_share: float = Field(0.5, ge=0.0, le=1.0)


@register
class Grayscale(ImageIssue):
    """Images without colour (every pixel R = G = B) in a set that is mostly colour: 0 for grey, 1
    for colour. In a grey set (digits, scans) nothing is flagged."""

    name, Knobs = "grayscale", GrayscaleKnobs

    def scores(self, q):
        return 1.0 - q["grey"].to_numpy(float)

    def threshold(self, q):
        return 0.5 if len(q) and 1 - q["grey"].mean() >= self.knobs.min_colour_share else 0.0


IMAGE_ISSUES = tuple(name for name, d in REGISTRY.items() if not d.needs_labels)  # found on every sample
