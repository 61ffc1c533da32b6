"""Which samples to send to annotators: a small registry of selectors over a manifest.

Each selector returns the chosen rows, best first, at most `limit` of them, and adds a `reason`
column. `issues` needs `is_label_issue` and `label_score` (lower = more likely wrong, from the
clean stage); `hard` needs a `hardness` table (the mine stage); `random` is seeded per sample
from `(seed, sample_id)` so adding samples does not reshuffle the rest; `ids` takes an explicit
list; `active` picks unlabeled (pool) samples worth a person's time: the least certain by
cleanlab's ActiveLab score (or the ensemble's disagreement), made diverse by greedy k-center
over the oof embeddings of a shortlist (or, `diversity: kmeans`, the sample nearest each centre
of an uncertainty-weighted k-means of it), so a batch is not near-identical images, and with
`balance` an equal share of it per predicted class (at a cold start the least certain crowd into
the few classes the model confuses); `typical` picks pool samples by TypiClust (the most typical
sample of each part of the embedding space the labeled set covers least), for budgets of a few
labels per class, where the least certain samples teach less than random ones; `badge` picks pool
samples by BADGE (k-means++ seeding over the gradient embeddings: uncertain and diverse at once,
with no shortlist or weight to tune).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from pipeline.core import artifacts, dataset, schema
from pipeline.core.errors import PipelineError
from pipeline.core.registry import Registry


@dataclass
class Selection:
    limit: int = 200
    seed: int = 0
    min_score: float | None = None  # issues: keep label_score >= min_score
    max_score: float | None = None  # issues: keep label_score <= max_score
    hardness: pd.DataFrame | None = None  # hard: sample_id, hardness
    ids: list[str] = field(default_factory=list)  # ids: in this order
    score: str = "activelab"  # active: activelab | disagreement
    embeddings: tuple[np.ndarray, np.ndarray] | None = None  # active: (sample_ids, vectors), e.g. oof's
    shortlist: int = 10  # active: diversity runs over the `shortlist` x limit least certain
    diversity: str = "kcenter"  # active: kcenter | kmeans
    balance: bool = False  # active: an equal share of the batch per predicted class
    labeled: np.ndarray | None = None  # typical: sample_ids already labeled (train), whatever --split keeps


def _need(df: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in df]
    if missing:
        raise PipelineError(
            f"--select {what} needs manifest columns {list(columns)}, missing "
            f"{missing} (is --manifest the clean stage's output?)"
        )


def issues(df: pd.DataFrame, s: Selection) -> pd.DataFrame:
    _need(df, ("is_label_issue", "label_score"), "issues")
    out = df[df[schema.IS_LABEL_ISSUE].fillna(False).astype(bool)]
    if s.min_score is not None:
        out = out[out["label_score"] >= s.min_score]
    if s.max_score is not None:
        out = out[out["label_score"] <= s.max_score]
    return out.sort_values(["label_score", schema.SAMPLE_ID], kind="stable")


def hard(df: pd.DataFrame, s: Selection) -> pd.DataFrame:
    if s.hardness is None:
        raise PipelineError("--select hard needs the hardness table (--hardness)")
    _need(s.hardness, ("sample_id", "hardness"), "hard")
    out = df.drop(columns=["hardness"], errors="ignore").merge(
        s.hardness[[schema.SAMPLE_ID, schema.HARDNESS]], on="sample_id", how="inner"
    )
    return out.sort_values([schema.HARDNESS, schema.SAMPLE_ID], ascending=[False, True], kind="stable")


def random(df: pd.DataFrame, s: Selection) -> pd.DataFrame:
    keys = np.array([dataset.sample_seed(s.seed, sid) for sid in df[schema.SAMPLE_ID]], dtype=np.uint64)
    return df.iloc[np.argsort(keys, kind="stable")]


def ids(df: pd.DataFrame, s: Selection) -> pd.DataFrame:
    if not s.ids:
        raise PipelineError("--select ids needs --ids (a file with one sample_id a line, or a comma list)")
    wanted = list(dict.fromkeys(s.ids))
    unknown = [i for i in wanted if i not in set(df[schema.SAMPLE_ID])]
    if unknown:
        raise PipelineError(f"{len(unknown)} of {len(wanted)} ids are not in the manifest, e.g. {unknown[:3]}")
    return df.set_index(schema.SAMPLE_ID, drop=False).loc[wanted]


ACTIVE_SCORES = ("activelab", "disagreement")


def active(df: pd.DataFrame, s: Selection) -> pd.DataFrame:
    _need(df, ("split", artifacts.PROBS), "active")
    pool = df[df[schema.SPLIT] == schema.POOL]
    if pool.empty:
        raise PipelineError(
            "--select active: no unlabeled samples in the manifest "
            "(set ingest.unlabeled_path, or leave labels empty in a CSV source)"
        )
    if s.score == "activelab":
        from cleanlab.multiannotator import get_active_learning_scores

        _, score = get_active_learning_scores(pred_probs_unlabeled=np.stack(pool[artifacts.PROBS].to_numpy()))
    elif s.score == "disagreement":
        _need(pool, ("disagreement",), "active --score disagreement")
        score = -pool["disagreement"].to_numpy(float)
    else:
        raise PipelineError(f"--score: expected one of {', '.join(ACTIVE_SCORES)}, got {s.score!r}")
    if s.diversity not in DIVERSITY:
        raise PipelineError(f"--diversity: expected one of {', '.join(DIVERSITY)}, got {s.diversity!r}")
    order = np.lexsort((pool[schema.SAMPLE_ID].to_numpy(), score))  # least certain first, ties by id
    if s.balance:  # an equal share per predicted class, round-robin, so a cut keeps the balance
        predicted = np.stack(pool[artifacts.PROBS].to_numpy()).argmax(1)[order]
        classes = np.unique(predicted)
        quota = np.full(len(classes), s.limit // len(classes)) + (np.arange(len(classes)) < s.limit % len(classes))
        per_class = [_spread(pool, order[predicted == c], score, q, s) for c, q in zip(classes, quota)]
        picked = np.array([p for turn in itertools.zip_longest(*per_class) for p in turn if p is not None], np.int64)
    else:
        picked = _spread(pool, order, score, s.limit, s)
    order = np.concatenate([picked, order[~np.isin(order, picked)]])
    return pool.iloc[order].assign(active_score=np.round(score[order], 6))


def _spread(pool: pd.DataFrame, order: np.ndarray, score: np.ndarray, k: int, s: Selection) -> np.ndarray:
    """`k` of the `shortlist` x k first of `order`, spread over the embeddings (or the first `k`)."""
    short = order[: max(k, s.shortlist * k)]
    if s.embeddings is None or len(short) <= k or k == 0:
        return short[:k]
    ids, vectors = s.embeddings
    rows = pd.Index(ids).get_indexer(pool[schema.SAMPLE_ID].to_numpy()[short])
    if (rows < 0).any():
        raise PipelineError("--select active: the embeddings lack some pool samples; re-run oof")
    if s.diversity == "kcenter":
        return short[k_center(vectors[rows], k)]
    # the least certain weigh most; the seed is fixed: the batch is a function of its inputs
    return short[k_means(vectors[rows], k, score[short].max() - score[short] + 1e-6, s.seed)]


def k_center(x: np.ndarray, k: int) -> np.ndarray:
    """Greedy k-center (Sener & Savarese 2018): row 0 first, then each time the row farthest
    from every row chosen so far; positions into `x`, in the order chosen."""
    x = np.asarray(x, np.float64)
    chosen = [0]
    dist = np.linalg.norm(x - x[0], axis=1)
    for _ in range(1, min(k, len(x))):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(x - x[nxt], axis=1))
    return np.array(chosen, np.int64)


def k_means(x: np.ndarray, k: int, weight: np.ndarray, seed: int = 0) -> np.ndarray:
    """Diverse mini-batch active learning (Zhdanov 2019): k-means of `x` weighted by `weight`
    (the uncertainty), then the row nearest each centre, heaviest cluster first; positions into
    `x`. Unlike k-center, which starts from the farthest rows (outliers, at a cold start mostly
    odd images), each pick stands for a dense region of uncertain samples."""
    from sklearn.cluster import KMeans

    x = np.asarray(x, np.float64)
    k = min(k, len(x))
    km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(x, sample_weight=weight)
    dist = km.transform(x)
    mass = np.bincount(km.labels_, weights=weight, minlength=k)
    picked: list[int] = []
    for c in np.argsort(-mass, kind="stable"):  # nearest unpicked row: two centres may share one
        order = np.argsort(dist[:, c], kind="stable")
        picked.append(int(next(i for i in order if i not in picked)))
    return np.array(picked, np.int64)


DIVERSITY = ("kcenter", "kmeans")


def _embedded_pool(df: pd.DataFrame, s: Selection, what: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The pool rows of `df` and their rows in `s.embeddings`; a one-line error when either is missing."""
    pool = df[df[schema.SPLIT] == schema.POOL]
    if pool.empty:
        raise PipelineError(f"--select {what}: no unlabeled samples in the manifest (set ingest.unlabeled_path)")
    if s.embeddings is None:
        raise PipelineError(f"--select {what} needs the oof embeddings (--oof)")
    rows = pd.Index(s.embeddings[0]).get_indexer(pool[schema.SAMPLE_ID].to_numpy())
    if (rows < 0).any():
        raise PipelineError(f"--select {what}: the embeddings lack some pool samples; re-run oof")
    return pool, rows


def typical(df: pd.DataFrame, s: Selection) -> pd.DataFrame:
    _need(df, ("split",), "typical")
    pool, rows = _embedded_pool(df, s, "typical")
    ids, vectors = s.embeddings
    known = pd.Index(ids).get_indexer(np.asarray(s.labeled if s.labeled is not None else [], dtype=object))
    known = np.unique(known[known >= 0])
    x = np.concatenate([vectors[rows], vectors[known]])
    labeled = np.arange(len(x)) >= len(rows)
    picked = typiclust(x, labeled, min(s.limit, len(rows)), s.seed)
    return pool.iloc[picked]


def typiclust(
    x: np.ndarray, labeled: np.ndarray, k: int, seed: int = 0, max_clusters: int = 500, knn: int = 20
) -> np.ndarray:
    """TypiClust (Hacohen, Dekel & Weinshall 2022, "Active learning on a budget"): k-means of
    every row, labeled or not, into min(labeled + k, `max_clusters`) clusters; the clusters
    with the fewest labeled rows first (the largest first among equals), from each in turn its
    most typical unlabeled row (the inverse of the mean distance to its `knn` nearest unlabeled
    neighbours in the cluster). Positions of unlabeled rows of `x`, in the order chosen.
    Written here: no maintained library ships it (the authors' code is a research repository)."""
    from sklearn.cluster import KMeans
    from sklearn.neighbors import NearestNeighbors

    x, labeled = np.asarray(x, np.float32), np.asarray(labeled, bool)
    free = np.flatnonzero(~labeled)
    n_clusters = int(min(labeled.sum() + k, max_clusters, len(free)))
    cluster = KMeans(n_clusters=n_clusters, n_init=1, random_state=seed).fit_predict(x)
    covered = np.bincount(cluster[labeled], minlength=n_clusters)
    size = np.bincount(cluster[free], minlength=n_clusters)
    queues = []
    for c in np.lexsort((-size, covered)):  # least covered first, then the largest
        members = free[cluster[free] == c]
        if len(members) == 0:
            continue
        if len(members) > 1:
            dist, _ = NearestNeighbors(n_neighbors=min(knn, len(members) - 1)).fit(x[members]).kneighbors()
            members = members[np.argsort(dist.mean(1), kind="stable")]  # the most typical first
        queues.append(list(members))
    picked: list[int] = []
    while len(picked) < min(k, len(free)):  # one per cluster in turn, until `k`
        for q in queues:
            if q and len(picked) < k:
                picked.append(int(q.pop(0)))
    return np.array(picked, np.int64)


def badge(df: pd.DataFrame, s: Selection) -> pd.DataFrame:
    """BADGE (Ash et al. 2020, "Deep batch active learning by diverse, uncertain gradient lower
    bounds"): each pool sample's gradient embedding, the last layer's loss gradient were the
    ensemble's predicted class its label, `(p - onehot(argmax p)) x h`, then k-means++ seeding
    over them. Its norm is the uncertainty and its direction the diversity, so a batch is both
    without a shortlist; the rest of the pool follows by gradient norm."""
    _need(df, ("split", artifacts.PROBS), "badge")
    pool, rows = _embedded_pool(df, s, "badge")
    vectors = s.embeddings[1]
    probs = np.stack(pool[artifacts.PROBS].to_numpy()).astype(np.float64)
    a = probs - np.eye(probs.shape[1])[probs.argmax(1)]
    picked = kmeans_pp_outer(a, vectors[rows], min(s.limit, len(pool)), s.seed)
    norm = (a * a).sum(1)
    rest = np.setdiff1d(np.arange(len(pool)), picked)
    rest = rest[np.lexsort((pool[schema.SAMPLE_ID].to_numpy()[rest], -norm[rest]))]
    return pool.iloc[np.concatenate([picked, rest])]


def kmeans_pp_outer(a: np.ndarray, h: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) of the rows `a[i] (x) h[i]` (outer
    products), the largest first, then each with odds its squared distance to the nearest chosen
    one. Written here for the outer products: <a_i (x) h_i, a_j (x) h_j> = (a_i . a_j)(h_i . h_j),
    so the (N, K*D) gradient embeddings (0.9 GB for Fashion-MNIST's pool: 59k x 10 classes x
    3 folds x 64) are never built. Positions, in the order chosen; once every distance is 0
    (all alike), the rest by position."""
    a, h = np.asarray(a, np.float64), np.asarray(h, np.float64)
    sq = (a * a).sum(1) * (h * h).sum(1)
    rng = np.random.default_rng(seed)
    chosen = [int(np.argmax(sq))]
    dist = np.full(len(a), np.inf)
    while len(chosen) < min(k, len(a)):
        j = chosen[-1]
        dist = np.minimum(dist, np.maximum(sq + sq[j] - 2 * (a @ a[j]) * (h @ h[j]), 0.0))
        dist[chosen] = 0.0
        total = dist.sum()
        if total <= 0:
            chosen += [int(i) for i in np.setdiff1d(np.arange(len(a)), chosen)[: k - len(chosen)]]
            break
        chosen.append(int(rng.choice(len(a), p=dist / total)))
    return np.array(chosen, np.int64)


SELECTORS: Registry[Callable[[pd.DataFrame, Selection], pd.DataFrame]] = Registry(
    "selector (--select)",
    [
        ("issues", issues),
        ("hard", hard),
        ("random", random),
        ("ids", ids),
        ("active", active),
        ("typical", typical),
        ("badge", badge),
    ],
)


def select(df: pd.DataFrame, how: str, s: Selection, splits: list[str] | None = None) -> pd.DataFrame:
    pick = SELECTORS[how]  # an unknown name fails here, listing the valid ones
    if splits:
        _need(df, ("split",), "with --split")
        df = df[df[schema.SPLIT].isin(splits)]
    out = pick(df, s).head(s.limit).reset_index(drop=True)
    return out.assign(reason=how)


def read_ids(spec: str) -> list[str]:
    """`--ids`: a file (one id a line, or a CSV with a `sample_id` column) or a comma list."""
    path = Path(spec)
    if path.is_file():
        text = path.read_text().splitlines()
        if text and text[0].strip() == "sample_id" or path.suffix == ".csv":
            return pd.read_csv(path, dtype=str)[schema.SAMPLE_ID].dropna().str.strip().tolist()
        return [line.strip() for line in text if line.strip() and not line.startswith("#")]
    return [i.strip() for i in spec.split(",") if i.strip()]
