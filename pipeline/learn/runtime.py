"""Where training runs: torch's thread count, the DDP world, deterministic kernels, the device and
its precision."""

from __future__ import annotations

import contextlib
import os

import torch

from pipeline.core.errors import PipelineError
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


def device(name: str) -> torch.device:
    """`base.device` as a torch device: auto is cuda, else mps, else cpu; a device that is not
    there fails on one line. A DDP worker (LOCAL_RANK set) given `cuda` gets its own GPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:  # a DDP worker: its own GPU
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"base.device: {name}: torch {torch.__version__} sees no CUDA device (use auto or cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise PipelineError(f"base.device: {name}: there are {torch.cuda.device_count()} CUDA devices")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise PipelineError(f"base.device: {name}: no MPS device (use auto or cpu)")
    return dev


def bf16(precision: str, dev: torch.device) -> bool:
    """Whether inference on `dev` runs under bf16 autocast. auto: where the hardware has bf16 units
    (CUDA that supports it; a CPU with AVX512-BF16 or AMX, where a ResNet-18 embedded 3x faster
    with channels_last than in fp32, docs/backbones.md). Features agree with fp32 to about 1e-2."""
    if precision != "auto":
        return precision == "bf16"
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if dev.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own probes (private)
        return any(getattr(torch.cpu, p, lambda: False)() for p in probes)
    return False
