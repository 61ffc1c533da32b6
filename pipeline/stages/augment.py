"""augment: offline augmented copies of the train samples, as a derived dataset with lineage.

Writes `<out>/manifest.parquet` + `<out>/images/`: `augment.copies` children of every real
train sample (never val or test), each with `parent_id`, `policy`, `ops` (JSON: the ops,
magnitudes and parameters actually applied, in order), `seed` and `weight`;
`metrics/augment.json`; and a preview grid for every policy in `--policies`
(`<plots>/<policy>.png`: each original followed by its augmentations, the first `copies` of
them for the chosen policy being exactly the stored ones).

Copy `k` of parent `p` draws its ops from a generator seeded by `(base.seed,
"augment:<p>:<k>")` (the `seed` column), so its pixels depend on nothing else: not on the
other samples, the chunking, or the number of worker processes (`augment.workers`, 0: all
cores).
When `augment.enabled` is false, or `augment.mode` is `online` (training then applies the
policy to each batch instead), the manifest is empty. `augment.num_ops` / `augment.magnitude`
override a RandAugment policy's N and M; the metrics record the N and M used.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import pandas as pd

from pipeline.augment import policy as pol
from pipeline.core import dataset, schema, wiring
from pipeline.core.console import log, progress
from pipeline.core.executor import cores, ordered_map
from pipeline.core.wiring import StageParams
from pipeline.render import gallery

COLUMNS = schema.columns("policy", "ops", "seed")
CHUNK = 512  # parents per task: large enough to amortise inter-process transfer
PREVIEW_COPIES = 7


class Source:
    """The parents' pixels, read lazily from their memory-mapped stores (cheap to send to a worker)."""

    def __init__(self, df: pd.DataFrame):
        self.stores = tuple(pd.unique(df[schema.STORE]))
        index = {s: i for i, s in enumerate(self.stores)}
        self.store_of = np.array([index[s] for s in df[schema.STORE]], np.int32)
        self.rows = df[schema.ROW].to_numpy(np.int64)
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> np.ndarray:
        s = int(self.store_of[i])
        if s not in self._maps:
            self._maps[s] = np.load(self.stores[s], mmap_mode="r")
        return np.asarray(self._maps[s][self.rows[i]])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": {}}


@dataclass(frozen=True)
class Job:
    source: Source
    parents: tuple[str, ...]  # parent sample ids, in source order
    policy: object
    copies: int
    seed: int


def copy_seed(seed: int, parent_id: str, copy: int) -> int:
    """53 bits of the per-sample seed: exact even where a column of them turns float (a concat
    with rows that have none, as in the assembled manifest)."""
    return dataset.sample_seed(seed, f"augment:{parent_id}:{copy}") & (2**53 - 1)


def augment_one(job: Job, i: int, copy: int) -> tuple[np.ndarray, list[pol.Drawn], int]:
    """Copy `copy` of parent `i`: (pixels, what was applied, the seed it was drawn from)."""
    img = job.source[i]
    seed = copy_seed(job.seed, job.parents[i], copy)
    drawn = pol.draw(job.policy, np.random.default_rng(seed), img.shape, pool_size=len(job.source))
    trace: list[pol.Drawn] = []
    out = pol.apply(img, drawn, pool=job.source, policy=job.policy, trace=trace)
    for j, d in enumerate(trace):  # name SamplePairing's partner by id, not by position
        if "partner" in d.params:
            params = {k: v for k, v in d.params.items() if k != "partner"}
            trace[j] = d._replace(params={**params, "partner_id": job.parents[d.params["partner"]]})
    return np.ascontiguousarray(out, np.uint8), trace, seed


def augment_range(job: Job, start: int, stop: int) -> tuple[np.ndarray, list[str], list[int], list[str], Counter]:
    """All copies of parents [start, stop), parent-major: pixels, ops JSON, seeds, hashes, op counts."""
    pixels, records, seeds, hashes, counts = [], [], [], [], Counter()
    for i in range(start, stop):
        for k in range(job.copies):
            px, trace, seed = augment_one(job, i, k)
            pixels.append(px)
            records.append(pol.record(trace))
            seeds.append(seed)
            hashes.append(dataset.pixel_hash(px))
            counts.update(d.op for d in trace)
    return np.stack(pixels), records, seeds, hashes, counts


def _span(job: Job, span: tuple[int, int]):
    return augment_range(job, *span)


def _one_cv2_thread() -> None:
    import cv2

    cv2.setNumThreads(1)  # a worker per core: OpenCV's own threads would oversubscribe it


def augment(job: Job, workers: int, executor: str = "local", desc: str = "augment") -> Iterator[tuple]:
    """`augment_range` over chunks of parents, in order, on `workers` processes (0: all cores) of
    `executor` (pipeline/core/executor.py)."""
    import cv2

    n = len(job.parents)
    spans = [(i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]
    bar = progress(total=n * job.copies, desc=desc, unit="img")
    # OpenCV's thread pool does not survive a fork (a child that touches it can hang), so it is
    # wound down before the local pool forks; the parallelism is over images anyway
    threads = cv2.getNumThreads()
    if min(workers or cores(), len(spans)) > 1:
        cv2.setNumThreads(1)
    try:
        for res in ordered_map(_span, spans, job, workers, executor, initializer=_one_cv2_thread):
            bar.update(len(res[1]))
            yield res
    finally:
        cv2.setNumThreads(threads)
    bar.close()


class Result(NamedTuple):
    copies: pd.DataFrame  # the augmented copies' manifest rows
    metrics: dict


def run(params: StageParams, split_df: pd.DataFrame, policy_name: str, policy, store: dataset.ShardWriter) -> Result:
    """The augmented copies of the train samples under `policy`. Their pixels stream into `store`
    (the one output run takes: train x copies images need not fit in memory); their manifest
    rows and the metrics come back."""
    cfg = params.augment
    parents = schema.real_train(split_df)
    active = cfg.enabled and cfg.mode != "online"
    metrics = {
        "enabled": cfg.enabled,
        "mode": cfg.mode,
        "train_online": pol.trains_online(cfg, len(parents)),
        "policy": policy_name,
        "executor": params.base.executor,
        "kind": policy.kind,
        "num_ops": getattr(policy, "num_ops", None),
        "magnitude": getattr(policy, "magnitude", None),
        "copies": cfg.copies,
        "parents": len(parents) if active else 0,
    }
    if not active or len(parents) == 0:
        metrics.update(augmented=0, unchanged=0, op_counts={})
        return Result(pd.DataFrame(columns=COLUMNS), metrics)
    job = Job(Source(parents), tuple(parents[schema.SAMPLE_ID]), policy, cfg.copies, params.base.seed)
    records, seeds, hashes, locs, counts = [], [], [], [], Counter()
    for px, rec, sd, hs, cnt in augment(job, cfg.workers, params.base.executor, desc=f"augment {policy_name}"):
        locs.extend(store.add(p) for p in px)
        records += rec
        seeds += sd
        hashes += hs
        counts += cnt
    store.close()
    rep = parents.loc[parents.index.repeat(cfg.copies)]
    copy = np.tile(np.arange(cfg.copies), len(parents))
    df = schema.derived_rows(
        rep,
        schema.AUGMENTED,
        [dataset.sample_id(p, "augment", policy_name, k) for p, k in zip(rep[schema.SAMPLE_ID], copy)],
        own={"policy": policy_name, "ops": records, "seed": np.array(seeds, np.int64)},
        weight=cfg.weight,
        storage={"pixel_sha256": hashes, "store": [s for s, _ in locs], "row": [r for _, r in locs]},
    )
    unchanged = int((df[schema.PIXEL_SHA256].to_numpy() == rep[schema.PIXEL_SHA256].to_numpy()).sum())
    metrics.update(augmented=len(df), unchanged=unchanged, op_counts=dict(sorted(counts.items())))
    return Result(df, metrics)


def preview(
    policy_name: str,
    policy,
    split_df: pd.DataFrame,
    classes: list[str],
    seed: int,
    n: int,
    copies: int = PREVIEW_COPIES,
):
    """A grid: each of the first `n` train samples, then `copies` of its augmentations (None: no samples)."""
    parents = schema.real_train(split_df)
    if n == 0 or len(parents) == 0:
        return None
    job = Job(Source(parents), tuple(parents[schema.SAMPLE_ID]), policy, copies, seed)
    images, captions = [], []
    for i in range(min(n, len(parents))):
        images.append(job.source[i])
        captions.append(classes[int(parents[schema.LABEL_ID].iloc[i])][:10])
        for k in range(copies):
            px, trace, _ = augment_one(job, i, k)
            images.append(px)
            names = [d.op[:10] for d in trace] or ["(none)"]
            captions.append("\n".join(names[:2]) + ("+" if len(names) > 2 else ""))
    return gallery.grid(
        np.stack(images),
        captions,
        cols=copies + 1,
        title=f"{policy_name} ({policy.kind}): original, then {copies} augmentations",
    )


STAGE = wiring.Stage(
    "augment",
    reads=(
        wiring.Flag("--clean", "clean output: the train samples"),
        wiring.Flag("--policy", "the policy file augment.policy names"),
    ),
    writes=(wiring.Flag("--out", "output folder"),),
    params=("base", "augment"),
)


def main(params: StageParams, args: argparse.Namespace) -> None:
    split_df, classes = schema.read(args.clean, "samples")
    cfg = params.augment
    name, policy = pol.load_path(args.policy, num_ops=cfg.num_ops, magnitude=cfg.magnitude)
    out, plots = Path(args.out), Path(args.plots)
    with dataset.staged_dir(out) as tmp:
        df, metrics = run(params, split_df, name, policy, dataset.ShardWriter(tmp / "images", out / "images"))
        dataset.write_manifest(df, tmp / dataset.MANIFEST, classes, final_dir=out)
    with dataset.staged_dir(plots) as tmp:
        grid = preview(name, policy, split_df, classes, params.base.seed, params.augment.preview)
        if grid is not None:
            gallery.save(grid, tmp / f"{name}.png")
    dataset.write_json(args.metrics, metrics)
    log.info(
        "augment: %d copies of %d train samples with %s (%s)",
        metrics["augmented"],
        metrics["parents"],
        name,
        metrics["mode"],
    )
