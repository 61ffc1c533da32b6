"""split: stratified, group-aware, deterministic, leak-safe train/val/test assignment.

Writes `<out>/manifest.parquet`, the ingested manifest plus
  cluster_id      the unit that is never split: a sample joined with its exact duplicates
                  (same `pixel_sha256`), its near duplicates (pipeline/dedup/neardup.py) and the
                  samples sharing its `group`; named by its smallest member key
  dup_group       smallest sample_id among the sample's exact/near duplicates (None: none)
  split           train / val / test, "unlabeled" (the pool: no label), or "removed"
  removed_reason  the rule that removed the sample; dup_of: the sample it duplicates
`<out>/duplicates.csv` (every verified duplicate pair, with its scores) and the leakage
report's pictures in --plots. Samples are not copied.

Removal rules (counted in metrics/split.json; in == kept + unlabeled + removed):
  exact_duplicate_of_test, near_duplicate_of_test, group_shared_with_test: when the source
      fixes the test set (split.respect_source_split), a train/val sample clustered with a
      test sample is removed, never moved into test; likewise *_of_val for a source val set
      (an image folder laid out as root/{train,val,test}/<class>/);
  pool_exact_duplicate_of_test, pool_near_duplicate_of_val, ...: an unlabeled sample clustered
      with a val or test sample: it would feed train (pseudo-labels, labeling rounds);
  within_split_duplicate (split.drop_duplicates): all but one of a duplicate set in a split.
Then independent checks (pipeline/dedup/leakcheck.py) search the kept samples for duplicate pairs
across splits; a non-zero count fails the stage when split.fail_on_leak.

Assignment is by quantile: inside each label stratum, clusters are ordered by a hash of
(base.seed, cluster_id) and cut at the cumulative fractions: exact stratification up to one
cluster per boundary, and adding a sample moves at most the clusters next to a boundary.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from pipeline.core import artifacts, dataset, schema, wiring
from pipeline.core.console import log, progress
from pipeline.core.errors import PipelineError
from pipeline.core.params import ClusterLimit, NearDuplicates, Split, Suspects
from pipeline.core.wiring import StageParams
from pipeline.dedup import leakcheck, neardup, suspects
from pipeline.render import gallery

ORDER = ("test", "val", "train")  # cut order along each stratum
KEPT = ("train", "val", "test")
HELD_OUT = ("test", "val")
POOL = schema.POOL
REMOVED = "removed"
DUPLICATES = "duplicates.csv"
# a pair per link: kind exact / near / suspected; the cascade's residuals (rms, peak) or the content distance;
# cut: the link would have grown its cluster past split.cluster_limit, so it did not join
DUPLICATE_COLUMNS = ("sample_a", "sample_b", "kind", "dy", "dx", "rms", "peak", "distance", "cut")
SUSPECTED = "suspected_pairs.csv"  # pairs across splits whose coarse content matches (not joined)


@dataclass
class Clusters:
    cluster_id: pd.Series  # per row of the manifest
    dup_group: pd.Series  # per row: smallest sample_id of its duplicate set, or None
    pairs: pd.DataFrame  # sample_a, sample_b, kind (exact / near), dy, dx, rms, peak


def store_images(df: pd.DataFrame, chunk: int = 8192, executor: str = "local") -> neardup.Images:
    """The pixels of `df`'s rows, read store by store in chunks of at most `chunk`; the feature
    passes over them run on `executor` (`base.executor`)."""
    df = df.reset_index(drop=True)
    order = np.lexsort((df[schema.ROW].to_numpy(), df[schema.STORE].to_numpy()))
    spans = [order[a : a + chunk] for a in range(0, len(df), chunk)]
    return neardup.Images(len(df), spans, lambda pos: dataset.load_pixels(df.iloc[np.asarray(pos)]), executor)


def _unit_keys(df: pd.DataFrame) -> np.ndarray:
    group = df[schema.GROUP].astype(object) if schema.GROUP in df else pd.Series(None, index=df.index)
    has_group = (group.notna() & (group.astype(str) != "")).to_numpy()
    return np.where(has_group, "g:" + group.astype(str), "s:" + df[schema.SAMPLE_ID].astype(str))


def _min_per_component(labels: np.ndarray, keys: np.ndarray) -> np.ndarray:
    return pd.Series(keys).groupby(labels).transform("min").to_numpy()


def clusters(
    df: pd.DataFrame,
    cfg: NearDuplicates,
    images: neardup.Images | None = None,
    checks: dict[str, dict] | None = None,
    suspected: Suspects | None = None,
    limit: ClusterLimit | None = None,
) -> Clusters:
    """The units that must stay within one split: exact + near duplicates + groups (+ with
    `suspected.join`, the suspected pairs among each sample's `suspected.k` nearest, kind "suspected").

    The pairs that the post-hoc `checks` would call duplicates join the clusters too, so the split
    never makes a split its own check refuses; the checks then run again, after splitting, as an
    independent guard."""
    n = len(df)
    sids = df[schema.SAMPLE_ID].astype(str).to_numpy()
    images = images if images is not None else store_images(df, cfg.chunk)
    if schema.PIXEL_SHA256 in df:
        digest = df[schema.PIXEL_SHA256].to_numpy()
    else:
        digest = np.empty(n, object)
        for pos, pix in images.chunks():
            digest[pos] = [dataset.pixel_hash(p) for p in pix]
    first = pd.Series(np.arange(n)).groupby(digest, sort=False).transform("min").to_numpy()
    exact = np.flatnonzero(first != np.arange(n))
    pairs = [pd.DataFrame({"i": exact, "j": first[exact], "kind": "exact", "dy": 0, "dx": 0, "rms": 0.0, "peak": 0.0})]
    reps = np.flatnonzero(first == np.arange(n))
    if cfg.enabled and len(reps) > 1:
        sub = images.subset(reps) if len(reps) < n else images
        found = detector(cfg).find(sub, progress=lambda it: progress(it, desc="near-duplicates", unit="chunk"))
        near = [found.assign(checked=False)]
        for name, knobs in (checks or {}).items():
            extra = leakcheck.get(name)(**knobs).pairs(sub, lambda it: progress(it, desc=f"{name} check", unit="chunk"))
            if extra is not None and len(extra):
                near.append(extra[["i", "j", "dy", "dx", "rms", "peak"]].assign(checked=True))
        near = pd.concat(near, ignore_index=True).sort_values("checked", ascending=False, kind="stable")
        near = near.drop_duplicates(["i", "j"]).assign(i=lambda d: reps[d["i"]], j=lambda d: reps[d["j"]], kind="near")
        pairs.append(near)
    if suspected is not None and suspected.join and n > 1:
        space = suspects.Space(suspects.descriptors(images))
        radius, _ = suspects.threshold(space, suspected.factor, suspected.k)
        i, j = suspects.within(space, radius, suspected.k)
        dist = 1.0 - np.einsum("pd,pd->p", space.desc[i], space.desc[j])
        pairs.append(pd.DataFrame({"i": i, "j": j, "kind": "suspected", "distance": dist.round(6)}))
    pairs = pd.concat(pairs, ignore_index=True).reindex(columns=[*DUPLICATE_COLUMNS[2:8], "i", "j", "checked"])
    pairs["checked"] = pairs["checked"].fillna(False).astype(bool)
    # exact copies and what the checks call duplicates always join; the cascade's and the suspects' links
    # join strongest first, while the cluster stays within the limit (`cluster_limit`)
    fixed = (pairs["kind"] == "exact").to_numpy() | pairs["checked"].to_numpy()
    ranked = pairs[~fixed].assign(weak=lambda d: d["kind"] == "suspected")
    ranked = ranked.sort_values(["weak", "rms", "peak", "distance"], kind="stable") if len(ranked) else ranked
    keys = _unit_keys(df)
    grouped = pd.Series(np.arange(n)).groupby(keys).transform("min").to_numpy()
    strong = [(pairs["i"].to_numpy()[fixed], pairs["j"].to_numpy()[fixed])]
    ri, rj = ranked["i"].to_numpy(), ranked["j"].to_numpy()
    comp, cut = neardup.limited_components(n, strong + [(np.arange(n), grouped)], (ri, rj), _limits(df, ri, rj, limit))
    dup = neardup.components(n, strong + [(ri[~cut], rj[~cut])])
    dup_size = np.bincount(dup, minlength=n)[dup]
    dup_group = np.where(dup_size > 1, _min_per_component(dup, sids), None)
    pairs["cut"] = False
    pairs.loc[ranked.index[cut], "cut"] = True
    pairs = pairs.assign(sample_a=sids[pairs["i"]], sample_b=sids[pairs["j"]])
    pairs = pairs[list(DUPLICATE_COLUMNS)]
    return Clusters(
        pd.Series(_min_per_component(comp, keys), index=df.index),
        pd.Series(dup_group, index=df.index, dtype=object),
        pairs.sort_values(["sample_a", "sample_b"]).reset_index(drop=True),
    )


def _limits(df: pd.DataFrame, i: np.ndarray, j: np.ndarray, cfg: ClusterLimit | None) -> np.ndarray:
    """Per link, the most samples its cluster may hold: `cfg.share` of the labeled samples of its
    class (the first end's label, else the second's; the largest class for two unlabeled ends), at
    least `cfg.min_size`; no limit without `cfg`."""
    if cfg is None:
        return np.full(len(i), len(df) + 1)
    label = df[schema.LABEL].astype(object).to_numpy()
    counts = pd.Series(label[pd.notna(label)]).value_counts()
    size = pd.Series(label[i]).where(pd.notna(label[i]), pd.Series(label[j])).map(counts)
    size = size.fillna(counts.max() if len(counts) else len(df)).to_numpy()
    return np.maximum(cfg.min_size, np.floor(cfg.share * size)).astype(np.int64)


def suspected_pairs(
    df: pd.DataFrame,
    cfg: Suspects,
    images: neardup.Images | None = None,
    chunk: int = 8192,
    embeddings: np.ndarray | None = None,
) -> tuple[pd.DataFrame, dict]:
    """The looser content check after splitting: each val and test sample's nearest sample in another
    split (the pool counts as train) and another cluster, kept where their coarse content is within
    the data's own threshold (pipeline/dedup/suspects.py); with a backbone's `embeddings` (rows of
    `df`), the same search in their space too (`by`: content or embedding). (pairs, metrics)."""
    columns = ["sample_a", "split_a", "sample_b", "split_b", "distance", "by"]
    kept = np.flatnonzero(df[schema.SPLIT].isin((*KEPT, POOL)).to_numpy())
    side = df[schema.SPLIT].to_numpy()[kept]
    side = np.where(side == POOL, "train", side)
    queries = np.flatnonzero(np.isin(side, HELD_OUT))
    if not cfg.enabled or not len(queries) or len(kept) < 2:
        return pd.DataFrame(columns=columns), {"enabled": cfg.enabled, "pairs": 0, "checked": int(len(queries))}
    sub = images.subset(kept) if images is not None else store_images(df.iloc[kept], chunk)
    cluster = df[schema.CLUSTER_ID].to_numpy()[kept]
    sids, splits = df[schema.SAMPLE_ID].to_numpy(), df[schema.SPLIT].to_numpy()

    def allowed(q, rows):  # another split, another cluster
        return (side[rows] != side[q][:, None]) & (cluster[rows] != cluster[q][:, None])

    spaces = {"content": suspects.descriptors(sub)}
    if embeddings is not None:
        z = embeddings[kept].astype(np.float32)
        spaces["embedding"] = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    found, metrics = [], {"enabled": True, "factor": cfg.factor, "k": cfg.k, "checked": int(len(queries))}
    for by, desc in spaces.items():
        space = suspects.Space(desc)
        limit, median = suspects.threshold(space, cfg.factor, cfg.k)
        dist, j = suspects.nearest(space, queries, np.arange(len(kept)), allowed)
        hit = np.flatnonzero((j >= 0) & (dist <= limit))
        a, b = kept[queries[hit]], kept[j[hit]]
        found.append(
            pd.DataFrame(
                {"sample_a": sids[a], "split_a": splits[a], "sample_b": sids[b], "split_b": splits[b]}
                | {"distance": dist[hit].round(6), "by": by}
            )
        )
        key = "" if by == "content" else "embedding_"
        metrics |= {f"{key}threshold": round(limit, 6), f"{key}median_kth_distance": round(median, 6)}
        metrics[f"{by}_pairs"] = len(hit)
    pairs = pd.concat(found, ignore_index=True).drop_duplicates(["sample_a", "sample_b"])  # content's first
    pairs = pairs.sort_values(["by", "distance", "sample_a"], kind="stable").reset_index(drop=True)
    metrics["pairs"] = len(pairs)
    return pairs, metrics


def detector(cfg: NearDuplicates) -> neardup.Cascade:
    return neardup.Cascade(
        neardup.Descriptor("thumb", grid=cfg.grid, margin=cfg.max_shift),
        max_shift=cfg.max_shift,
        radius=cfg.radius,
        neighbours=cfg.neighbours,
        index=cfg.index,
        rms_threshold=cfg.rms_threshold,
        peak_threshold=cfg.peak_threshold,
    )


def assign(df: pd.DataFrame, fractions: dict[str, float], seed: int) -> pd.Series:
    """Split name per row of `df` (needs `cluster_id`, `label`), stratified by label."""
    votes = df.groupby([schema.CLUSTER_ID, schema.LABEL]).size().rename("n").reset_index()
    votes = votes.sort_values([schema.CLUSTER_ID, "n", schema.LABEL], ascending=[True, False, True])
    units = votes.drop_duplicates(schema.CLUSTER_ID).set_index(schema.CLUSTER_ID)[[schema.LABEL]]
    units["size"] = df.groupby(schema.CLUSTER_ID).size()
    units["key"] = [dataset.sample_seed(seed, c) for c in units.index]
    units = units.sort_values([schema.LABEL, "key"], kind="stable")
    edges = np.cumsum([fractions[s] for s in ORDER])
    out = pd.Series("", index=units.index, dtype=object)
    for _, stratum in units.groupby(schema.LABEL, sort=False):
        mid = (stratum["size"].cumsum() - stratum["size"] / 2) / stratum["size"].sum()
        idx = np.minimum(np.searchsorted(edges, mid.to_numpy(), side="right"), len(ORDER) - 1)
        out[stratum.index] = np.asarray(ORDER)[idx]
    return df[schema.CLUSTER_ID].map(out)


def _remove_duplicates_of(
    df: pd.DataFrame, held: np.ndarray, name: str, candidates: np.ndarray, rule: str = ""
) -> None:
    """Rules *_of_<name>: the `candidates` rows clustered with a `held` row (of the fixed split
    `name`) are removed, never moved into it; `rule` prefixes the rule names (pool_ for the pool)."""
    test = df[held]
    hit = candidates & df[schema.CLUSTER_ID].isin(test[schema.CLUSTER_ID]).to_numpy()
    if not hit.any():
        return
    rows = df[hit]

    def first(key):
        return rows[key].map(test.dropna(subset=[key]).groupby(key)[schema.SAMPLE_ID].min())

    exact = first("pixel_sha256") if schema.PIXEL_SHA256 in df else pd.Series(None, index=rows.index)
    near = first("dup_group")
    kind = np.where(
        exact.notna(), "exact_duplicate_of_", np.where(near.notna(), "near_duplicate_of_", "group_shared_with_")
    )
    df.loc[hit, schema.SPLIT] = REMOVED
    df.loc[hit, schema.REMOVED_REASON] = [f"{rule}{k}{name}" for k in kind]
    df.loc[hit, schema.DUP_OF] = exact.fillna(near).fillna(first("cluster_id")).to_numpy()


def _within_split(df: pd.DataFrame) -> pd.DataFrame:
    """Kept rows that have a duplicate in the same split, but the first (smallest id) of each."""
    kept = df[df[schema.SPLIT].isin(KEPT) & df[schema.DUP_GROUP].notna()]
    first = kept.groupby([schema.DUP_GROUP, schema.SPLIT])[schema.SAMPLE_ID].transform("min")
    return kept.assign(dup_of=first)[kept[schema.SAMPLE_ID] != first]


class Result(NamedTuple):
    samples: pd.DataFrame  # the manifest with split, cluster_id, duplicate_of
    duplicates: pd.DataFrame  # DUPLICATES: the near-duplicate and exact pairs (DUPLICATE_COLUMNS)
    suspected: pd.DataFrame  # SUSPECTED: pairs across splits the looser content check suspects
    metrics: dict


def run(params: StageParams, df: pd.DataFrame, images: neardup.Images, embeddings: np.ndarray | None = None) -> Result:
    """`df` split under `split.*` and `base.seed`: duplicate clusters found on `images` (the
    stores' pixels, `store_images`), then `partition`, then the suspects check across the splits
    (on `embeddings` too: embed's features in `df`'s order, with a backbone)."""
    cfg = params.split
    found = clusters(df, cfg.near_duplicates, images, cfg.checks, cfg.suspects, cfg.cluster_limit)
    df, metrics = partition(df, cfg, params.base.seed, found, executor=params.base.executor)
    suspected, metrics["suspected"] = suspected_pairs(df, cfg.suspects, images, embeddings=embeddings)
    metrics["executor"] = params.base.executor
    return Result(df, found.pairs, suspected, metrics)


def partition(
    df: pd.DataFrame,
    cfg: Split,
    seed: int,
    found: Clusters | None = None,
    images: neardup.Images | None = None,
    executor: str = "local",
) -> tuple[pd.DataFrame, dict]:
    """(the manifest split, metrics): cluster (unless `found` is given), split, apply the removal
    rules, run the checks (their feature passes on `executor` where `images` is not given)."""
    df = df.reset_index(drop=True).copy()
    if found is None:
        found = clusters(df, cfg.near_duplicates, images, cfg.checks, cfg.suspects, cfg.cluster_limit)
    df[schema.CLUSTER_ID], df[schema.DUP_GROUP] = found.cluster_id.to_numpy(), found.dup_group.to_numpy()
    df[schema.SPLIT], df[schema.REMOVED_REASON], df[schema.DUP_OF] = "", None, None
    pool = df[schema.LABEL].isna().to_numpy()
    source = df[schema.SOURCE_SPLIT].fillna("").to_numpy() if schema.SOURCE_SPLIT in df else np.full(len(df), "")
    fixed = [name for name in HELD_OUT if cfg.respect_source_split and (source[~pool] == name).any()]
    for name in fixed:  # test first: a val sample clustered with a test one is removed
        todo = ~pool & (df[schema.SPLIT] == "").to_numpy()
        held = todo & (source == name)
        df.loc[held, schema.SPLIT] = name
        _remove_duplicates_of(df, held, name, todo & ~held)
        log.info("split: keeping the source's %s set (%d samples)", name, held.sum())
    todo = ~pool & (df[schema.SPLIT] == "").to_numpy()
    free = [name for name in ORDER if name not in fixed]
    total = sum(cfg.fractions[name] for name in free)
    fractions = {name: (cfg.fractions[name] / total if name in free else 0.0) for name in ORDER}
    df.loc[todo, schema.SPLIT] = assign(df[todo], fractions, seed)
    df.loc[pool, schema.SPLIT] = POOL
    for name in HELD_OUT:  # the pool feeds train: never a duplicate of a val or test sample
        _remove_duplicates_of(
            df, (df[schema.SPLIT] == name).to_numpy(), name, (df[schema.SPLIT] == POOL).to_numpy(), "pool_"
        )
    fixed_test = "test" in fixed
    within = _within_split(df)
    if cfg.drop_duplicates:
        drop = within[~((within[schema.SPLIT] == "test") & fixed_test)]
        df.loc[drop.index, ["split", "removed_reason", "dup_of"]] = np.column_stack(
            [np.full(len(drop), REMOVED), np.full(len(drop), "within_split_duplicate"), drop[schema.DUP_OF].to_numpy()]
        )
        within = _within_split(df)
    metrics = _metrics(df, found, within, fixed_test)
    metrics["cluster_limit"] = _limit_report(df, found, cfg.cluster_limit)
    leaks = check(df, cfg, images, executor)
    metrics.update({leakcheck.get(name).metric(): len(p) for name, p in leaks.items()})
    total = sum(len(p) for p in leaks.values())
    if total and cfg.fail_on_leak:
        p = next(p for p in leaks.values() if len(p))
        a, b = df.iloc[p.iloc[0]["a"]], df.iloc[p.iloc[0]["b"]]
        counts = ", ".join(f"{name} {len(p)}" for name, p in leaks.items())
        raise PipelineError(
            f"{total} duplicate pairs cross splits after splitting ({counts}; e.g. "
            f"{a[schema.SAMPLE_ID]} in {a[schema.SPLIT]} ~ {b[schema.SAMPLE_ID]} in {b[schema.SPLIT]}); "
            "set split.fail_on_leak: false to keep this split anyway"
        )
    return df, metrics


def check(
    df: pd.DataFrame, cfg: Split, images: neardup.Images | None = None, executor: str = "local"
) -> dict[str, pd.DataFrame]:
    """Post-hoc checks over the kept rows: {check name: pairs (a, b) as positions in df}. The pool
    counts as train (it feeds train): a pool sample may duplicate a train one, not a val or test one."""
    kept = np.flatnonzero(df[schema.SPLIT].isin((*KEPT, POOL)).to_numpy())
    sub = df.iloc[kept].reset_index(drop=True)
    sub[schema.SPLIT] = sub[schema.SPLIT].replace(POOL, "train")
    images = images.subset(kept) if images is not None else store_images(sub, cfg.near_duplicates.chunk, executor)
    out = {}
    for name, knobs in cfg.checks.items():
        pairs = leakcheck.get(name)(**knobs).find(sub, images)
        out[name] = pd.DataFrame({"a": kept[pairs["a"].to_numpy()], "b": kept[pairs["b"].to_numpy()]})
    return out


def _limit_report(df: pd.DataFrame, found: Clusters, cfg: ClusterLimit) -> dict:
    """What the cluster limit did: the links it cut (weakest first), and the clusters still past it
    because exact copies, checked pairs or groups hold them (kept whole: those are never cut)."""
    pairs = found.pairs.reindex(columns=list(DUPLICATE_COLUMNS))  # a hand-made Clusters may lack some
    cut = pairs[pairs["cut"].fillna(False).astype(bool)]
    labeled = df[schema.LABEL].notna()
    counts = df.loc[labeled, schema.LABEL].value_counts()
    sizes = df.groupby(schema.CLUSTER_ID).size()
    big = df[labeled & df[schema.CLUSTER_ID].isin(sizes.index[sizes > cfg.min_size])]  # none smaller can pass
    major = big.groupby([schema.CLUSTER_ID, schema.LABEL]).size().sort_values(ascending=False, kind="stable")
    major = major.reset_index().drop_duplicates(schema.CLUSTER_ID).set_index(schema.CLUSTER_ID)[schema.LABEL]
    allowed = np.maximum(cfg.min_size, np.floor(cfg.share * major.map(counts).to_numpy(dtype=float)))
    over = sizes[major.index][sizes[major.index].to_numpy() > allowed].sort_values(ascending=False, kind="stable")
    weakest = cut.sort_values(["rms", "distance"], ascending=False, kind="stable").head(5)
    return {
        "share": cfg.share,
        "min_size": cfg.min_size,
        "cut_links": int(len(cut)),
        "weakest_cut": [
            {"a": r.sample_a, "b": r.sample_b, "kind": r.kind, "rms": _num(r.rms), "distance": _num(r.distance)}
            for r in weakest.itertuples()
        ],
        "kept_whole": {str(k): int(v) for k, v in over.head(5).items()},
        "kept_whole_clusters": int(len(over)),
    }


def _num(v) -> float | None:
    return None if pd.isna(v) else round(float(v), 4)


def _metrics(df: pd.DataFrame, found: Clusters, within: pd.DataFrame, fixed_test: bool) -> dict:
    counts = df[schema.SPLIT].value_counts()
    sizes = df.groupby(schema.CLUSTER_ID).size()
    dup_sizes = df.dropna(subset=["dup_group"]).groupby(schema.DUP_GROUP).size()
    conflicts = df.dropna(subset=["dup_group"]).groupby(schema.DUP_GROUP)[schema.LABEL].nunique()
    bins = {"2": (2, 2), "3": (3, 3), "4-7": (4, 7), "8+": (8, np.inf)}
    removed = df.loc[df[schema.SPLIT] == REMOVED, schema.REMOVED_REASON].value_counts().sort_index()
    m = {
        "in": len(df),
        "kept": int(df[schema.SPLIT].isin(KEPT).sum()),
        "unlabeled": int(counts.get(POOL, 0)),
        "removed": int(counts.get(REMOVED, 0)),
        "removed_by_rule": {str(k): int(v) for k, v in removed.items()},
        "source_test_kept": bool(fixed_test),
        **{s: int(counts.get(s, 0)) for s in ORDER},
        "clusters": int(len(sizes)),
        "clusters_with_several": int((sizes > 1).sum()),
        "largest_cluster": int(sizes.max()) if len(sizes) else 0,
        "duplicates": {
            "exact_pairs": int((found.pairs["kind"] == "exact").sum()),
            "near_pairs": int((found.pairs["kind"] == "near").sum()),
            "sets": int(len(dup_sizes)),
            "samples_in_sets": int(dup_sizes.sum()),
            "set_sizes": {k: int(((dup_sizes >= lo) & (dup_sizes <= hi)).sum()) for k, (lo, hi) in bins.items()},
            "label_conflicts": int((conflicts > 1).sum()),
        },
        "within_split_duplicates": {s: int((within[schema.SPLIT] == s).sum()) for s in KEPT},
        "per_class": {
            s: {
                str(k): int(v)
                for k, v in df.loc[df[schema.SPLIT] == s, schema.LABEL].value_counts().sort_index().items()
            }
            for s in ORDER
        },
    }
    labels = sorted(df.loc[df[schema.SPLIT].isin(KEPT), schema.LABEL].astype(str).unique())
    m["classes_missing_from"] = {s: [c for c in labels if c not in m["per_class"][s]] for s in ("val", "test")}
    assert (
        m["in"] == m["kept"] + m["unlabeled"] + m["removed"] == sum(m[s] for s in ORDER) + m["unlabeled"] + m["removed"]
    )
    return m


def report(df: pd.DataFrame, plots: Path, examples: int, suspected: pd.DataFrame | None = None) -> None:
    """PNG grids: the largest clusters, removed samples beside what they duplicate, and suspected
    pairs across splits."""
    plots.mkdir(parents=True, exist_ok=True)
    sizes = df.groupby(schema.CLUSTER_ID).size()
    top = sizes[sizes > 1].sort_values(ascending=False, kind="stable").head(examples)
    rows, caps = [], []
    for cid in top.index:
        members = df[df[schema.CLUSTER_ID] == cid].head(8)
        rows += list(members.index) + [None] * (8 - len(members))
        caps += [f"{r.split}\n{str(r.label)[:9]}" for r in members.itertuples()] + [""] * (8 - len(members))
    _grid(
        df,
        rows,
        caps,
        plots / "largest_clusters.png",
        f"{len(top)} largest clusters (of {int((sizes > 1).sum())} with several samples), one per row",
    )
    removed = df[df[schema.SPLIT] == REMOVED].head(4 * examples)
    ids = df.reset_index().set_index(schema.SAMPLE_ID)["index"]
    rows = [x for r in removed.itertuples() for x in (r.Index, ids.get(r.dup_of))]
    caps = [c for r in removed.itertuples() for c in (f"removed\n{r.removed_reason.split('_of')[0][:14]}", "kept")]
    _grid(
        df,
        rows,
        caps,
        plots / "removed_pairs.png",
        f"removed samples (left) and what they duplicate; {int((df[schema.SPLIT] == REMOVED).sum())} removed",
    )
    if suspected is not None:
        shown = suspected.head(4 * examples)
        rows = [ids.get(x) for r in shown.itertuples() for x in (r.sample_a, r.sample_b)]
        caps = [c for r in shown.itertuples() for c in (f"{r.split_a}\n{r.distance:.4f}", r.split_b)]
        title = f"suspected duplicates across splits, closest first (pairs side by side); {len(suspected)} pairs"
        _grid(df, rows, caps, plots / "suspected_pairs.png", title)


def _grid(df: pd.DataFrame, rows: list, caps: list[str], path: Path, title: str) -> None:
    real = [r for r in rows if r is not None]
    if not real:
        gallery.save(gallery.empty(title), path)
        return
    pix = dataset.load_pixels(df.loc[real])
    blank = np.full(pix.shape[1:], 255, np.uint8)
    it = iter(pix)
    images = np.stack([next(it) if r is not None else blank for r in rows])
    gallery.save(gallery.grid(images, caps, cols=8, cell=56, title=title), path)


STAGE = wiring.Stage(
    "split",
    reads=(
        wiring.Flag("--ingest", "ingest output"),
        wiring.Flag("--embed", "embed output: a backbone's features, whose neighbours the suspects check adds"),
    ),
    writes=(wiring.Flag("--out", "output folder"),),
    params=("base", "split", "backbone"),
)


def main(params: StageParams, args: argparse.Namespace) -> None:
    from pipeline.core.executor import session

    df, classes = schema.read(args.ingest, "ingest")
    cfg = params.split
    images = store_images(df, cfg.near_duplicates.chunk, params.base.executor)
    embedded = artifacts.read_embeddings(args.embed, df[schema.SAMPLE_ID]) if params.backbone.name else None
    with session(params.base.executor):
        df, pairs, suspected, metrics = run(params, df, images, embedded)
    out = Path(args.out)
    with dataset.staged_dir(out) as tmp:
        dataset.write_manifest(df, tmp / dataset.MANIFEST, classes, final_dir=out)
        dataset.write_csv(tmp / DUPLICATES, pairs)
        dataset.write_csv(tmp / SUSPECTED, suspected)
    report(df, Path(args.plots), params.split.report_examples, suspected)
    dataset.write_json(args.metrics, metrics)
    log.info(
        "split: train %d, val %d, test %d, unlabeled %d, removed %d; %d duplicate sets; leaks: exact %d, near %d",
        metrics["train"],
        metrics["val"],
        metrics["test"],
        metrics["unlabeled"],
        metrics["removed"],
        metrics["duplicates"]["sets"],
        metrics.get("cross_split_exact", 0),
        metrics.get("cross_split_near_duplicates", 0),
    )
    lim = metrics["cluster_limit"]
    if lim["cut_links"]:
        w = lim["weakest_cut"][0]
        log.warning(
            "split: %d near-duplicate links cut so that no cluster grows past split.cluster_limit (max(%d, %g x its "
            "class)): the weakest first, e.g. %s ~ %s (%s); duplicates.csv marks them cut",
            lim["cut_links"],
            lim["min_size"],
            lim["share"],
            w["a"],
            w["b"],
            f"rms {w['rms']}" if w["rms"] is not None else f"distance {w['distance']}",
        )
    if lim["kept_whole_clusters"]:
        name, size = next(iter(lim["kept_whole"].items()))
        log.warning(
            "split: %d cluster(s) past split.cluster_limit are held by exact copies, checked pairs or groups, which "
            "are never cut: kept whole (the largest, %s, has %d samples)",
            lim["kept_whole_clusters"],
            name,
            size,
        )
    m = metrics["suspected"]
    if not m["enabled"]:
        log.info("split: split.suspects.enabled is false: re-rendered or re-encoded copies are not looked for")
    elif m["pairs"]:
        log.warning(
            "split: %d suspected duplicates across splits (coarse content within %.4g, %g x the median distance to "
            "the %d-th nearest sample), not joined: %s; join them with split.suspects.join: true or a CSV group column",
            m["pairs"],
            m["threshold"],
            m["factor"],
            m["k"],
            Path(args.out) / SUSPECTED,
        )
    else:
        log.info("split: no suspected duplicates across splits (%d val/test samples checked)", m["checked"])
    if metrics["val"] == 0:
        log.warning("the val split is empty: training cannot early-stop")
    for split_name, missing in metrics["classes_missing_from"].items():
        if missing and metrics[split_name] > 0:
            sizes = df[df[schema.SPLIT].isin(KEPT)][schema.LABEL].value_counts()
            log.warning(
                "split: %d class(es) with no %s sample, too small to be %s: %s",
                len(missing),
                split_name,
                "validated" if split_name == "val" else "tested",
                ", ".join(f"{c} ({sizes.get(c, 0)} images)" for c in missing[:10]),
            )
