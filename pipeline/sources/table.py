"""The `csv` source: a table with path,label[,group], paths relative to the table's folder."""

from __future__ import annotations

import os

import pandas as pd

from pipeline.core.errors import PipelineError
from pipeline.core.params import Ingest
from pipeline.sources.items import Item, file_item, outside, required_path


def csv(cfg: Ingest) -> tuple[list[Item], list[str]]:
    """A table with path,label[,group]; an empty label cell means the image is unlabeled."""
    table = required_path(cfg, "a CSV file with columns path,label[,group]")
    try:
        df = pd.read_csv(table, dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise PipelineError(f"{table}: cannot read as CSV: {e}".splitlines()[0]) from None
    missing = {"path", "label"} - set(df.columns)
    if missing:
        raise PipelineError(f"{table}: expected columns path,label[,group], got {','.join(df.columns)}")
    root = table.parent
    real_root = os.path.realpath(root)
    items = []
    for n, row in enumerate(df.itertuples(index=False), start=2):  # line 1 is the header
        rel = os.path.normpath(row.path.strip()).replace(os.sep, "/") if row.path.strip() else ""
        group = getattr(row, "group", "") or None
        if not rel:
            items.append(Item(path=f"<line {n}>", reason="missing_path", detail=f"line {n}: empty path"))
        elif os.path.isabs(rel) or outside(os.path.realpath(root / rel), real_root):
            items.append(
                Item(path=rel, reason="outside_root", detail=f"line {n}: path resolves outside the CSV's folder")
            )
        else:
            label = row.label.strip() or None
            items.append(file_item(str(root / rel), rel, real_root, label=label, group=group))
    return items, sorted({it.label for it in items if it.label})
