"""Post-hoc leak checks: after the split, search the kept samples for duplicate pairs that
sit in different splits. Each check is a small plug-in (a name, its knobs, one `find`),
configured in params.yaml as `split.checks: {name: {knobs}}`, and reports
`cross_split_<name>` in metrics/split.json.

The checks are independent of the detector that formed the clusters: `exact` hashes the
pixels again (BLAKE2b of the stored bytes, not ingest's `pixel_sha256`); `near_duplicates`
searches with a perceptual hash (DCT signs) instead of the clusterer's spatial descriptor,
and accepts by its own, stricter residual threshold, so that on real data it flags only
pairs that no reasonable detector would call distinct.
"""

from __future__ import annotations

import hashlib
from typing import Callable, ClassVar, Iterable

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from pipeline.core import schema
from pipeline.core.registry import Knobs, Registry
from pipeline.dedup import neardup

PAIR_COLUMNS = ["a", "b"]  # positions into the checked frame, a < b, different splits


class LeakCheck:
    """A search for duplicate pairs across splits. Subclasses set `name` and `Knobs`."""

    name: ClassVar[str]
    Knobs: ClassVar[type[BaseModel]] = Knobs

    def __init__(self, **knobs):
        self.knobs = self.Knobs(**knobs)

    @classmethod
    def metric(cls) -> str:
        return f"cross_split_{cls.name}"

    def find(self, df: pd.DataFrame, images: "neardup.Images") -> pd.DataFrame:
        """Pairs (a, b) of rows of `df` (with a `split` column) that leak across splits."""
        raise NotImplementedError

    def pairs(
        self, images: "neardup.Images", progress: Callable[[Iterable], Iterable] = lambda it: it
    ) -> pd.DataFrame | None:
        """Every pair (i, j, dy, dx, rms, peak) this check would call a duplicate, split or not, so
        that the split can cluster them before splitting; None where clustering already covers it."""
        return None


CHECKS: Registry[type[LeakCheck]] = Registry("leak check (split.checks)")
register = CHECKS.register


def get(name: str) -> type[LeakCheck]:
    return CHECKS[name]


def _cross(split: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    return lambda i, j: split[i] != split[j]


@register
class ExactCheck(LeakCheck):
    """Pixel-identical samples in different splits (a hash of the stored pixels)."""

    name = "exact"

    def find(self, df: pd.DataFrame, images: "neardup.Images") -> pd.DataFrame:
        digest = np.empty(len(df), object)
        for pos, pix in images.chunks():
            for p, img in zip(pos, pix):
                digest[p] = hashlib.blake2b(
                    np.ascontiguousarray(img).tobytes() + str(img.shape).encode(), digest_size=16
                ).hexdigest()
        split = df[schema.SPLIT].to_numpy()
        pairs = []
        groups = pd.Series(np.arange(len(df))).groupby(digest, sort=True)
        for _, members in groups:
            m = members.to_numpy()
            if len(m) > 1 and len(set(split[m])) > 1:
                a, b = np.triu_indices(len(m), 1)
                keep = split[m[a]] != split[m[b]]
                pairs.append(np.stack([m[a][keep], m[b][keep]], 1))
        out = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
        return pd.DataFrame(out, columns=PAIR_COLUMNS)


@register
class NearDuplicateCheck(LeakCheck):
    """Near-duplicate pairs across splits: perceptual-hash search, rms-residual acceptance."""

    name = "near_duplicates"

    class Knobs(Knobs):
        max_shift: int = Field(2, ge=0, le=8)  # px
        hamming: int = Field(8, ge=0, le=32)  # candidate radius, bits of the 63-bit hash
        neighbours: int = Field(4, ge=1, le=64)
        threshold: float = Field(5.0, ge=0.0, le=255.0)  # rms residual, 0..255 units

    def detector(self) -> neardup.Cascade:
        k = self.knobs
        return neardup.Cascade(
            neardup.Descriptor("phash", margin=k.max_shift),
            max_shift=k.max_shift,
            radius=2 * float(np.sqrt(k.hamming / 63)) + 1e-4,
            neighbours=k.neighbours,
            rms_threshold=k.threshold,
            peak_threshold=None,
        )

    def pairs(self, images, progress=lambda it: it):
        return self.detector().find(images, None, progress)

    def find(
        self, df: pd.DataFrame, images: "neardup.Images", progress: Callable[[Iterable], Iterable] = lambda it: it
    ) -> pd.DataFrame:
        split = df[schema.SPLIT].to_numpy()
        found = self.detector().find(images, _cross(split), progress)
        same = found["rms"].to_numpy() == 0  # pixel-identical after the fit: exact's to count
        ga, gb = found["i"].to_numpy(), found["j"].to_numpy()
        if same.any():
            pix_a, pix_b = images.take(ga[same]), images.take(gb[same])
            identical = (pix_a.reshape(len(pix_a), -1) == pix_b.reshape(len(pix_b), -1)).all(1)
            keep = np.ones(len(found), bool)
            keep[np.flatnonzero(same)[identical]] = False
            ga, gb = ga[keep], gb[keep]
        return pd.DataFrame({"a": ga, "b": gb})
