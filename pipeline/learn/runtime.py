"""Where training runs: torch's thread count, the DDP world, deterministic kernels."""

from __future__ import annotations

import contextlib
import os

import torch

from pipeline.core.params import Train


def threads(cfg: Train) -> int:
    """The torch threads `cfg.threads` means: 0 is every core this process may use, shared with the
    other training processes on this node under DDP (`LOCAL_WORLD_SIZE`, set by torch's launcher)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cfg.threads or max(1, (cores or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) unless torch.distributed is initialised (DDP)."""
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def set_threads(cfg: Train) -> None:
    torch.set_num_threads(threads(cfg))


@contextlib.contextmanager
def deterministic():
    """torch.use_deterministic_algorithms for the block (warn-only where an op has none)."""
    was, was_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=was_warn)
