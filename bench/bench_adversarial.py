"""Adversarial-example generation throughput: FGSM and PGD-10, ours vs torchattacks.

Both run in this process on the same model (the default small CNN, 28x28x1 inputs as in
Fashion-MNIST) and the same images, alternating, best of `--repeats`. Throughput does not
depend on the weights, so the model is freshly initialised. Prints examples/s and the
ratio ours / torchattacks (torchattacks is the test-only reference: `make test` installs it).

    python bench/bench_adversarial.py [--n 2048] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from pipeline.learn import attacks, models


def _time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = models.build_model(
        "small_cnn", 1, 10, 16, [0.286], [0.353], generator=torch.Generator().manual_seed(0)
    ).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand((args.n, 1, 28, 28), generator=g)
    y = torch.randint(0, 10, (args.n,), generator=g)
    bs = args.batch_size
    cases = {
        "fgsm": attacks.AttackConfig(eps=0.1, steps=1),
        "pgd10": attacks.AttackConfig(eps=0.1, steps=10, step_size=0.025, random_start=False),
    }
    try:
        import torchattacks

        ref = {
            "fgsm": torchattacks.FGSM(model, eps=0.1),
            "pgd10": torchattacks.PGD(model, eps=0.1, alpha=0.025, steps=10, random_start=False),
        }
    except ImportError:
        ref = {}
    print(f"{args.n} images 28x28x1, small_cnn, batch {bs}, {args.threads} threads, best of {args.repeats}")
    print(f"{'attack':8s} {'ours ex/s':>10s} {'torchattacks ex/s':>18s} {'ratio':>6s}")
    for name, cfg in cases.items():
        attack = attacks.get("fgsm" if name == "fgsm" else "pgd")

        def ours():
            return [
                attack.perturb(model, x[i : i + bs], y[i : i + bs], cfg)  # noqa: E731
                for i in range(0, args.n, bs)
            ]

        t_ours = _time(ours, args.repeats)
        if name in ref:
            theirs = lambda: [ref[name](x[i : i + bs], y[i : i + bs]) for i in range(0, args.n, bs)]  # noqa: E731
            t_ref = _time(theirs, args.repeats)
            print(f"{name:8s} {args.n / t_ours:10.0f} {args.n / t_ref:18.0f} {t_ref / t_ours:6.2f}")
        else:
            print(f"{name:8s} {args.n / t_ours:10.0f} {'(not installed)':>18s}")


if __name__ == "__main__":
    main()
