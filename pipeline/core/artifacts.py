"""Readers of the artifacts one stage writes and others read: the data contract between stages.

A stage never imports another stage to read its outputs: the writer and every reader use the
names and readers here (the layout of the manifests and image stores themselves is dataset.py's).

oof folder: `manifest.parquet` (the split manifest + `fold`, `probs`), `embeddings.npy` (N, folds * D;
with a backbone, its (N, D)) in manifest order, `dynamics.parquet` (`sample_id, fold, epoch,
p_given`), `models/fold{k}.pt`.
mine folder: `weights.parquet` (`sample_id, weight`: the train samples' sampling weights).
embed folder: `embeddings.npy` (N, D) float32, the backbone's features of every ingested sample, and
`samples.parquet` (`sample_id`, the rows' order); (N, 0) when no backbone is set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core import dataset, schema
from pipeline.core.errors import PipelineError

PROBS = schema.PROBS  # manifest column: out-of-fold class probabilities (a list of K floats), written by oof
OOF_EMBEDDINGS = "embeddings.npy"
OOF_DYNAMICS = "dynamics.parquet"
OOF_MODELS = "models"  # fold{k}.pt: the fold models (policy search, the synthetic-data gate)
MINE_WEIGHTS = "weights.parquet"
EMBEDDINGS = "embeddings.npy"
EMBED_SAMPLES = "samples.parquet"


def read_oof(path: str | Path) -> tuple[pd.DataFrame, list[str], np.ndarray, pd.DataFrame]:
    """(manifest, classes, embeddings, dynamics) of an oof output folder."""
    path = Path(path)
    df, classes = schema.read(path, "oof")
    emb = np.load(path / OOF_EMBEDDINGS)
    if len(emb) != len(df):
        raise PipelineError(f"{path}: {len(emb)} embeddings for {len(df)} samples; re-run oof")
    return df, classes, emb, pd.read_parquet(path / OOF_DYNAMICS)


def fold_model_files(path: str | Path) -> list[Path]:
    """The fold model files of an oof output folder, in fold order."""
    files = sorted((Path(path) / OOF_MODELS).glob("fold*.pt"), key=lambda p: int(p.stem[4:]))
    if not files:
        raise PipelineError(f"{path}: no fold models under {OOF_MODELS}/; re-run oof")
    return files


def with_oof_probs(manifest: pd.DataFrame, oof_dir: str | Path) -> pd.DataFrame:
    """`manifest` with the oof stage's `PROBS` column joined by sample_id (as it is when oof
    has not run), for readers of a later manifest (clean drops the column) such as `label pull`."""
    path = Path(oof_dir) / dataset.MANIFEST
    if PROBS in manifest or not path.exists():
        return manifest
    probs = pd.read_parquet(path, columns=["sample_id", PROBS]).set_index("sample_id")[PROBS]
    return manifest.assign(**{PROBS: manifest["sample_id"].map(probs)})


def read_mine_weights(path: str | Path) -> pd.DataFrame:
    """(sample_id, weight) of a mine output folder; a missing file or column is an error, never
    silently weight 1 (re-run mine)."""
    file = Path(path) / MINE_WEIGHTS
    if not file.is_file():
        raise PipelineError(f"{file}: no mine weights (has the mine stage run?)")
    df = pd.read_parquet(file)
    missing = {"sample_id", "weight"} - set(df.columns)
    if missing:
        raise PipelineError(f"{file}: missing column(s) {', '.join(sorted(missing))}; re-run mine")
    if not np.isfinite(df["weight"].to_numpy(float)).all() or (df["weight"] < 0).any():
        raise PipelineError(f"{file}: weights must be finite and non-negative; re-run mine")
    return df


def read_embeddings(path: str | Path, sample_ids) -> np.ndarray | None:
    """The embed stage's features (N, D) float32 for `sample_ids`, in their order; None when no
    backbone was set (embed wrote no features). A sample embed has not seen is an error."""
    path = Path(path)
    if not (path / EMBEDDINGS).is_file():
        raise PipelineError(f"{path}: no {EMBEDDINGS} (has the embed stage run?)")
    emb = np.load(path / EMBEDDINGS)
    if emb.shape[1] == 0:
        return None
    index = pd.read_parquet(path / EMBED_SAMPLES)["sample_id"]
    rows = pd.Series(np.arange(len(index)), index=index.to_numpy()).reindex(np.asarray(sample_ids))
    if rows.isna().any():
        raise PipelineError(f"{path}: no embedding for sample {rows.index[rows.isna()][0]}; re-run embed")
    return emb[rows.to_numpy(np.int64)]
