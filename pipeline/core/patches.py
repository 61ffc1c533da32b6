"""The label patch: what human annotators decided, one row per reviewed sample.

`labels/patches.csv` is written by `python -m pipeline label pull` and read by the clean stage
(a dependency of it in dvc.yaml). It is a plain file kept in **git**, not a DVC output and not
`dvc add`-ed: human labels are the most expensive data the project holds, and no DVC command
(`dvc exp run`, `checkout`, `gc`) deletes or reverts a file git tracks; `git log -p
labels/patches.csv` is its audit trail. The project ships it with a header only. Columns:

| column | meaning |
|---|---|
| `sample_id` | the sample (unique, rows sorted by it) |
| `old_label` | its label when the annotations were pulled |
| `label` | the consensus of the annotators (may equal `old_label`: a confirmed label) |
| `consensus_quality` | cleanlab's confidence in the consensus, 0..1 |
| `annotators` | how many usable answers it rests on (skips and "unsure" not counted) |
| `agreement` | the fraction of those answers that chose `label` |
| `revision` | git revision of the pull (`abc1234[-dirty]`), never a URL or token |
| `project` | the Label Studio project the answers came from |

A later pull replaces the rows of the samples it covers and keeps the others. This module
imports nothing beyond pandas, so the clean stage can use `read_patches`/`apply_patches`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import PipelineError

PATCHES = "labels/patches.csv"
COLUMNS = ["sample_id", "old_label", "label", "consensus_quality", "annotators", "agreement", "revision", "project"]
REQUIRED = ("sample_id", "label")
_DTYPES = {"sample_id": str, "old_label": str, "label": str, "revision": str, "project": str}


def empty() -> pd.DataFrame:
    return pd.DataFrame(
        {
            c: pd.Series(
                dtype=float if c in ("consensus_quality", "agreement") else int if c == "annotators" else object
            )
            for c in COLUMNS
        }
    )


def read_patches(path: str | Path = PATCHES, classes: list[str] | None = None, missing_ok: bool = True) -> pd.DataFrame:
    """The patch table; an empty one when the file does not exist and `missing_ok`.

    Fails (PipelineError) on a missing column, a duplicate `sample_id`, an empty label, or a
    label outside `classes` when the class list is given.
    """
    path = Path(path)
    if path.is_dir():
        raise PipelineError(f"{path}: is a folder; expected the patch file ({PATCHES})")
    if not path.exists():
        if missing_ok:
            return empty()
        raise PipelineError(f"{path}: no label patch (run `python -m pipeline label pull`)")
    df = pd.read_csv(
        path,
        dtype=_DTYPES,
        keep_default_na=False,
        na_values={"consensus_quality": [""], "agreement": [""], "annotators": [""]},
    )
    missing = [c for c in REQUIRED if c not in df]
    if missing:
        raise PipelineError(f"{path}: expected columns {list(REQUIRED)}, missing {missing}")
    dup = df["sample_id"][df["sample_id"].duplicated()]
    if len(dup):
        raise PipelineError(f"{path}: {len(dup)} duplicate sample_id(s), e.g. {dup.iloc[0]!r}")
    if (df["label"] == "").any():
        raise PipelineError(f"{path}: {(df['label'] == '').sum()} row(s) with an empty label")
    if classes is not None:
        bad = sorted(set(df["label"]) - set(classes))
        if bad:
            raise PipelineError(f"{path}: labels not in the class list: {bad[:5]}{' ...' if len(bad) > 5 else ''}")
    for c in COLUMNS:
        if c not in df:
            df[c] = empty()[c]
    return df


def write_patches(path: str | Path, new: pd.DataFrame, merge: bool = True) -> pd.DataFrame:
    """Write `new` (merged over the rows already in `path`), sorted by sample_id, atomically."""
    from pipeline.core import dataset

    new = new.reindex(columns=COLUMNS)
    if merge and Path(path).exists():
        old = read_patches(path)
        old = old[~old["sample_id"].isin(new["sample_id"])].reindex(columns=COLUMNS)
        new = new if old.empty else pd.concat([old, new], ignore_index=True)
    out = new.sort_values("sample_id", kind="stable").reset_index(drop=True)
    for c in ("consensus_quality", "agreement"):
        out[c] = out[c].astype(float).round(6)
    out["annotators"] = out["annotators"].astype("Int64")
    dataset.write_csv(path, out)
    return out


def apply_patches(
    df: pd.DataFrame, patches: pd.DataFrame, classes: list[str], min_quality: float = 0.0
) -> tuple[pd.DataFrame, dict]:
    """`df` with patched labels: `label`/`label_id` replaced where a patch with
    `consensus_quality >= min_quality` exists; adds `human_label` (the patch's label or empty)
    and `label_patched` (True where the label changed). Patches for unknown ids are counted.
    """
    df = df.copy()
    use = patches[patches["consensus_quality"].fillna(1.0) >= min_quality]
    human = df["sample_id"].map(use.set_index("sample_id")["label"]).astype(object)
    changed = human.notna() & (human != df["label"])
    df["human_label"] = human.fillna("").astype(str)
    df["label_patched"] = changed.to_numpy()
    df.loc[changed, "label"] = human[changed]
    if "label_id" in df:
        index = {c: i for i, c in enumerate(classes)}
        df["label_id"] = df["label"].map(index).fillna(-1).astype(np.int64)  # -1: still unlabeled (the pool)
    counts = {
        "patches": int(len(patches)),
        "applied": int(human.notna().sum()),
        "changed": int(changed.sum()),
        "below_quality": int(len(patches) - len(use)),
        "unknown_ids": int((~use["sample_id"].isin(df["sample_id"])).sum()),
    }
    return df, counts
