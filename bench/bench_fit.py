"""`fit` against a bare torch loop: the same model, data, optimizer and batch size, in one process.

    python bench/bench_fit.py                      # 20,000 28x28 images, batch 128, 2 epochs
    python bench/bench_fit.py --threads 1 2 --repeats 3 --json bench/fit_results.json
    python bench/bench_fit.py --compile --json bench/compile_results.json   # + the bare loop compiled

The bare loop is what a torch user writes: the pixels converted to float NCHW (channels-last)
once, a shuffled index per epoch, `F.cross_entropy`, `zero_grad`, `backward`, `step`. `fit` does
the same work plus what the pipeline needs: uint8 kept until the batch, per-sample weights, the
LR schedule, label smoothing, loss / accuracy bookkeeping and determinism. Each configuration
runs `--repeats` times, alternating fit and bare so drift hits both; the best run of each is
reported (img/s = optimizer steps x batch / wall seconds) with the ratio fit / bare.
With --compile the bare loop also runs on `torch.compile(model)`: its first step (the
compilation) is timed apart from the rest, which gives the steady speed-up and the number of
epochs after which compiling has paid for itself.
Run it on a quiet machine: one heavy job at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core import console, params
from pipeline.learn import fit, runtime


def bare(x: np.ndarray, y: np.ndarray, cfg, num_classes: int, compile: bool = False) -> tuple[float, float]:
    """Seconds for `cfg.epochs` epochs of the plain loop, and of its first step alone."""
    runtime.set_threads(cfg)
    g = torch.Generator().manual_seed(0)
    model = fit.new_model(x, cfg, num_classes, g)
    opt = fit.make_optimizer(model, cfg)
    forward = torch.compile(model) if compile else model
    t0 = time.perf_counter()
    xf = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255).contiguous(memory_format=torch.channels_last)
    yt = torch.from_numpy(y)
    bs = cfg.batch_size
    steps = len(y) // bs
    model.train()
    first = None
    for _ in range(cfg.epochs):
        order = torch.randperm(len(y), generator=g)
        for i in range(steps):
            idx = order[i * bs : (i + 1) * bs]
            loss = F.cross_entropy(forward(xf[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            first = first or time.perf_counter() - t0
    return time.perf_counter() - t0, first


def ours(x: np.ndarray, y: np.ndarray, cfg, num_classes: int) -> float:
    t0 = time.perf_counter()
    fit.fit(fit.Inputs(x, y, x[:0], y[:0], num_classes), cfg, 0, desc="bench")
    return time.perf_counter() - t0


def compiled(times: dict, firsts: dict, images: int, steps: int, epochs: int) -> dict:
    """Steady speeds with and without torch.compile (first step left out), the compilation's
    cost (first compiled step minus first plain step) and the epochs it takes to pay it back.
    `images` and `steps` count the whole run of `epochs` epochs."""
    best = {k: int(np.argmin(times[k])) for k in ("bare", "compiled")}
    per_image = {k: (times[k][best[k]] - firsts[k][best[k]]) / (images * (steps - 1) / steps) for k in best}
    cost = firsts["compiled"][best["compiled"]] - firsts["bare"][best["bare"]]
    saved = (per_image["bare"] - per_image["compiled"]) * images / epochs  # seconds an epoch
    return {
        "bare_steady_img_s": round(1 / per_image["bare"]),
        "compiled_img_s": round(1 / per_image["compiled"]),
        "compile_speedup": round(per_image["bare"] / per_image["compiled"], 3),
        "compile_seconds": round(cost, 1),
        "saved_per_epoch_s": round(saved, 2),
        "break_even_epochs": round(cost / saved, 1) if saved > 0 else None,
        "compiled_seconds": [round(s, 2) for s in times["compiled"]],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--threads", type=int, nargs="+", default=None, help="default: 1 and every core")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also the bare loop under torch.compile")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    console.setup(True)  # no progress bars
    cores = len(os.sched_getaffinity(0))
    thread_counts = args.threads or sorted({1, cores})
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.n, args.size, args.size, 1), dtype=np.uint8)
    y = rng.integers(0, 10, args.n).astype(np.int64)
    steps = args.n // args.batch_size * args.epochs * args.batch_size
    rows = []
    for t in thread_counts:
        cfg = params.Train(
            model=args.model, epochs=args.epochs, batch_size=args.batch_size, threads=t, warmup_epochs=0.5
        )
        times = {"fit": [], "bare": [], "compiled": []}
        firsts = {"bare": [], "compiled": []}
        for _ in range(args.repeats):
            times["fit"].append(ours(x, y, cfg, 10))
            for kind in ("bare", "compiled") if args.compile else ("bare",):
                seconds, first = bare(x, y, cfg, 10, compile=kind == "compiled")
                times[kind].append(seconds)
                firsts[kind].append(first)
        best = {k: min(v) for k, v in times.items() if v}
        row = {
            "threads": t,
            "fit_img_s": round(steps / best["fit"]),
            "bare_img_s": round(steps / best["bare"]),
            "ratio": round(best["bare"] / best["fit"], 3),
            "fit_seconds": [round(s, 2) for s in times["fit"]],
            "bare_seconds": [round(s, 2) for s in times["bare"]],
        }
        print(
            f"threads {t}: fit {row['fit_img_s']:,} img/s, bare loop {row['bare_img_s']:,} img/s, "
            f"ratio {row['ratio']:.3f}  (runs: fit {row['fit_seconds']} s, bare {row['bare_seconds']} s)",
            flush=True,
        )
        if args.compile:
            row.update(compiled(times, firsts, steps, args.n // args.batch_size * args.epochs, args.epochs))
            print(
                f"threads {t}: compiled bare loop {row['compiled_img_s']:,} img/s after its first step "
                f"(uncompiled {row['bare_steady_img_s']:,}), speed-up {row['compile_speedup']:.3f}; "
                f"compilation {row['compile_seconds']:.1f} s, paid back after {row['break_even_epochs']} epochs",
                flush=True,
            )
        rows.append(row)
    if args.json:
        setup = {k: getattr(args, k) for k in ("n", "size", "epochs", "batch_size", "model", "repeats")}
        with open(args.json, "w") as f:
            json.dump({"setup": {**setup, "cores": cores, "torch": torch.__version__}, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
