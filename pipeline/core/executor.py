"""Where the per-sample stages' work runs (`base.executor`): a local process pool or Ray Data.

`ordered_map(fn, items, shared, ...)` yields `fn(shared, item)` for each item, in input order,
whichever runs it,
so a stage's outputs do not depend on the executor or the worker count: the same chunks in the
same order, each computed by the same deterministic function.

- `local`: a fork process pool (`imap`), or this process with one worker. `shared` (e.g. the
  parents' pixels) reaches the workers through the fork, never pickled.
- `ray`: a Ray Dataset of the items, `map_batches` (one item a batch) on an actor pool, with
  `preserve_order`; `shared` goes to each actor once. `RAY_ADDRESS` set: that cluster; unset:
  a local Ray with the cores this process may use, started here and shut down at the end. The
  workers get `fn` and `shared` by value (cloudpickle), and read files at paths every node sees.
  Nothing imports ray unless a stage asks for it.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
from collections.abc import Callable, Iterable, Iterator

from pipeline.core.errors import PipelineError


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def ordered_map(
    fn: Callable, items: Iterable, shared=None, workers: int = 0, executor: str = "local", initializer=None
) -> Iterator:
    """`fn(shared, item)` for every item, in order, on `workers` processes (0: every core) of `executor`.
    `initializer()` runs in each worker first (e.g. to set a library's thread count)."""
    if executor == "local" and workers == 1:  # here, one item at a time: nothing held ahead
        yield from (fn(shared, it) for it in items)
        return
    items = list(items)
    workers = max(1, min(workers or cores(), len(items) or 1))
    if executor == "ray":
        yield from _ray_map(fn, items, shared, workers, initializer)
    elif workers == 1:
        yield from (fn(shared, it) for it in items)
    else:
        global _TASK
        _TASK = (fn, shared)  # before the fork: the workers inherit it
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)
        try:
            with ctx.Pool(workers, initializer=initializer) as pool:
                yield from pool.imap(_local, items)
        finally:
            _TASK = None


_TASK: tuple | None = None


def _local(item):
    fn, shared = _TASK
    return fn(shared, item)


class _Apply:
    """A Ray Data actor: unpickles (fn, shared) once, then maps each one-item batch through it."""

    def __init__(self, task: bytes, initializer):
        self.fn, self.shared = pickle.loads(task)
        if initializer is not None:
            initializer()

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        out = [pickle.dumps(self.fn(self.shared, pickle.loads(b))) for b in batch["item"]]
        return {"out": np.array(out, dtype=object)}


@contextlib.contextmanager
def ray_session(workers: int):
    """Ray, initialised: the cluster at RAY_ADDRESS, or a local one with `workers` CPUs (shut down after)."""
    try:
        import ray
    except ImportError:
        raise PipelineError("base.executor ray needs Ray: pip install -e '.[ray]'") from None
    started = not ray.is_initialized()
    if started:
        address = os.environ.get("RAY_ADDRESS")
        kwargs = {} if address else {"num_cpus": workers, "include_dashboard": False}
        ray.init(address=address, log_to_driver=False, configure_logging=False, **kwargs)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def session(executor: str, workers: int = 0) -> contextlib.AbstractContextManager:
    """One Ray for a stage's several `ordered_map` calls (with `ray`; nothing with `local`), so
    a local Ray starts once, not once a call."""
    return ray_session(workers or cores()) if executor == "ray" else contextlib.nullcontext()


def _ray_map(fn: Callable, items: list, shared, workers: int, initializer) -> Iterator:
    import cloudpickle

    with ray_session(workers) as ray:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        ds = ray.data.from_items([{"item": pickle.dumps(it)} for it in items], override_num_blocks=len(items) or 1)
        out = ds.map_batches(
            _Apply,
            fn_constructor_args=(cloudpickle.dumps((fn, shared)), initializer),
            batch_size=1,
            concurrency=workers,
            num_cpus=1,
        )
        for row in out.iter_rows():
            yield pickle.loads(row["out"])
