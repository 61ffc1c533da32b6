"""Which samples to send to annotators: a small registry of selectors over a manifest.

Each selector returns the chosen rows, best first, at most `limit` of them, and adds a
`reason` column. `issues` needs `is_label_issue` and `label_score` (lower = more likely
wrong, from the clean stage); `hard` needs a `hardness` table (the mine stage); `random` is
seeded per sample from `(seed, sample_id)` so adding samples does not reshuffle the rest;
`ids` takes an explicit list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from pipeline import dataset
from pipeline.errors import PipelineError
from pipeline.registry import Registry


@dataclass
class Selection:
    limit: int = 200
    seed: int = 0
    min_score: float | None = None  # issues: keep label_score >= min_score
    max_score: float | None = None  # issues: keep label_score <= max_score
    hardness: pd.DataFrame | None = None  # hard: sample_id, hardness
    ids: list[str] = field(default_factory=list)  # ids: in this order


def _need(df: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in df]
    if missing:
        raise PipelineError(
            f"--select {what} needs manifest columns {list(columns)}, missing "
            f"{missing} (is --manifest the clean stage's output?)"
        )


def issues(df: pd.DataFrame, s: Selection) -> pd.DataFrame:
    _need(df, ("is_label_issue", "label_score"), "issues")
    out = df[df["is_label_issue"].fillna(False).astype(bool)]
    if s.min_score is not None:
        out = out[out["label_score"] >= s.min_score]
    if s.max_score is not None:
        out = out[out["label_score"] <= s.max_score]
    return out.sort_values(["label_score", "sample_id"], kind="stable")


def hard(df: pd.DataFrame, s: Selection) -> pd.DataFrame:
    if s.hardness is None:
        raise PipelineError("--select hard needs the hardness table (--hardness)")
    _need(s.hardness, ("sample_id", "hardness"), "hard")
    out = df.drop(columns=["hardness"], errors="ignore").merge(
        s.hardness[["sample_id", "hardness"]], on="sample_id", how="inner"
    )
    return out.sort_values(["hardness", "sample_id"], ascending=[False, True], kind="stable")


def random(df: pd.DataFrame, s: Selection) -> pd.DataFrame:
    keys = np.array([dataset.sample_seed(s.seed, sid) for sid in df["sample_id"]], dtype=np.uint64)
    return df.iloc[np.argsort(keys, kind="stable")]


def ids(df: pd.DataFrame, s: Selection) -> pd.DataFrame:
    if not s.ids:
        raise PipelineError("--select ids needs --ids (a file with one sample_id a line, or a comma list)")
    wanted = list(dict.fromkeys(s.ids))
    unknown = [i for i in wanted if i not in set(df["sample_id"])]
    if unknown:
        raise PipelineError(f"{len(unknown)} of {len(wanted)} ids are not in the manifest, e.g. {unknown[:3]}")
    return df.set_index("sample_id", drop=False).loc[wanted]


SELECTORS: Registry[Callable[[pd.DataFrame, Selection], pd.DataFrame]] = Registry(
    "selector (--select)", [("issues", issues), ("hard", hard), ("random", random), ("ids", ids)]
)


def select(df: pd.DataFrame, how: str, s: Selection, splits: list[str] | None = None) -> pd.DataFrame:
    pick = SELECTORS[how]  # an unknown name fails here, listing the valid ones
    if splits:
        _need(df, ("split",), "with --split")
        df = df[df["split"].isin(splits)]
    out = pick(df, s).head(s.limit).reset_index(drop=True)
    return out.assign(reason=how)


def read_ids(spec: str) -> list[str]:
    """`--ids`: a file (one id a line, or a CSV with a `sample_id` column) or a comma list."""
    path = Path(spec)
    if path.is_file():
        text = path.read_text().splitlines()
        if text and text[0].strip() == "sample_id" or path.suffix == ".csv":
            return pd.read_csv(path, dtype=str)["sample_id"].dropna().str.strip().tolist()
        return [line.strip() for line in text if line.strip() and not line.startswith("#")]
    return [i.strip() for i in spec.split(",") if i.strip()]
