"""Active learning vs random through a real Label Studio server, on Fashion-MNIST.

The labeled set starts at `--initial` labels (`ingest.keep_labels`: the same share of each
class; the rest of the 60k train images is the unlabeled pool, its truth hidden; the official
10k test set is the test split). Each round, for each strategy:

    python -m pipeline label push --select active|random|typical|badge --split unlabeled --limit N --project P
    (the annotator, simulated through Label Studio's API, answers each task with the true class)
    python -m pipeline label pull --project P      # -> labels/patches.csv, merged over rounds
    oof -> clean -> mine -> assemble -> train -> evaluate  (oof's fold models train on the answers)

so every round is scored by models that saw the earlier answers. Stages and the label commands run
as `python -m pipeline ...` in one scratch project per (strategy, seed), inside the server's
document root. Prints test accuracy per round, then for each strategy against random (linear
interpolation of the curves): the labels random needs to reach the strategy's final accuracy, and
the share of random's labels the strategy needs to reach random's final accuracy (the issue's
target: at most 70%). `--strategies typical+badge` selects with typical in round 1, badge after
(`random+badge`: random in round 1, the same picks as random's).

    python bench/bench_active.py --json bench/active_results.json
    python bench/bench_active.py --seeds 0 --rounds 2 --batch 500      # a shorter run
    python bench/bench_active.py --diversity kmeans                    # k-means, not k-center, spreads a batch
    python bench/bench_active.py --score disagreement                  # the fold models' disagreement (BALD)
    python bench/bench_active.py --strategies random badge --set train.batch_size=64 train.min_steps=6000 ...
                                    # the small-data recipe of docs/labeling.md: BADGE saves 39-46%
    python bench/bench_active.py --plot bench/active_results.json docs/img/active_curve.png  # the picture only
    python bench/bench_active.py --summarize bench/active_results.json  # both readings again, after adding runs

Run on a quiet machine: each round trains the fold models and the model anew.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pandas as pd
import yaml
from bench_oof_clean import with_sets
from bench_pseudo import flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core import dataset  # noqa: E402
from pipeline.labelstudio import config, serve  # noqa: E402
from pipeline.labelstudio.client import Client  # noqa: E402
from pipeline.quality import select  # noqa: E402

TRAIN_IMAGES = {"fashion-mnist": 60_000, "digits": 1_797}  # labeled images outside a test set: keep_labels' base
ROUND = ("oof", "clean", "mine", "assemble", "train", "evaluate")
STRATEGIES = ("active", "random", "typical", "badge", "typical+badge", "random+badge")  # label push --select:
# typical is TypiClust, badge BADGE; a+b: a in round 1, b after (TypiClust or random for the cold start, then
# uncertainty: Hacohen et al. 2022)


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run([sys.executable, "-m", "pipeline", *cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd[:2])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def stage(name: str, cwd: Path, env: dict) -> None:
    run([name, "--quiet", "--params", "params.yaml", *flags(name, [])], cwd, env)


def annotate(client: Client, project: str, truth: pd.Series, user: int) -> int:
    """Answer every unanswered task of `project` with the sample's true class."""
    pid = client.find_project(project)["id"]
    n = 0
    for task in client.export(pid):
        if not task.get("annotations"):
            label = truth[task["data"]["sample_id"]]
            client.create_annotation(task["id"], config.choice_result(label), completed_by=user)
            n += 1
    return n


def labels_to_match(curve: list[tuple[int, float]], target: float) -> float | None:
    """The labels at which `curve` (labels, accuracy) first reaches `target`, interpolated."""
    for (n0, a0), (n1, a1) in zip(curve, curve[1:]):
        if a0 >= target:
            return float(n0)
        if a1 >= target:
            return n0 + (n1 - n0) * (target - a0) / (a1 - a0)
    return float(curve[0][0]) if curve and curve[0][1] >= target else None


def plot(results: dict, out: Path) -> None:
    """Labels vs test accuracy, one line per (strategy, seed), the strategies' means bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    colors = {"active": "tab:orange", "active --balance": "tab:red", "random": "tab:blue", "typical": "tab:green"}
    colors |= {"active --score disagreement": "tab:olive", "active --balance --score disagreement": "tab:cyan"}
    colors |= {"badge": "tab:purple", "typical+badge": "tab:brown", "random+badge": "tab:pink"}
    for strategy, color in colors.items():
        curves = [r["curve"] for r in results["runs"] if r["strategy"] == strategy]
        for curve in curves:
            ax.plot(*zip(*curve), color=color, alpha=0.35, lw=1, marker=".")
        if curves:  # over the label counts every seed reached
            seeds = f"{len(curves)} seed{'s' * (len(curves) > 1)}"
            ax.plot(*zip(*mean_curve(curves)), color=color, lw=2.5, label=f"{strategy} (mean of {seeds})")
    ax.set_xlabel(f"labels ({results['initial']} initial + rounds of {results['batch']} answered in Label Studio)")
    ax.set_ylabel("test accuracy (official 10k test set)")
    drawn = ", ".join(dict.fromkeys(r["strategy"] for r in results["runs"]))
    title = f"Fashion-MNIST, label push --select: {drawn}{results.get('title', '')}"
    ax.set_title(textwrap.fill(title, 70), fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="fashion-mnist", choices=sorted(TRAIN_IMAGES), help="digits: a smoke run")
    ap.add_argument("--initial", type=int, default=500)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    ap.add_argument("--strategies", nargs="*", default=["active", "random"], choices=STRATEGIES)
    ap.add_argument("--diversity", default="kcenter", choices=["kcenter", "kmeans"], help="label push --diversity")
    ap.add_argument("--balance", action="store_true", help="label push --balance: a share per predicted class")
    ap.add_argument("--score", default="activelab", choices=select.ACTIVE_SCORES, help="label push --score")
    ap.add_argument("--set", nargs="*", default=[], help="more params, key=value")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", nargs=2, type=Path, metavar=("JSON", "PNG"), help="draw a stored run; run nothing")
    ap.add_argument("--summarize", type=Path, metavar="JSON", help="redo a stored run's summary in place; run nothing")
    args = ap.parse_args()
    if args.plot:
        return plot(json.loads(args.plot[0].read_text()), args.plot[1])
    if args.summarize:
        results = json.loads(args.summarize.read_text())
        results["summary"] = summarize(results)
        return args.summarize.write_text(json.dumps(results, indent=1) + "\n")
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    common = [
        f"ingest.source={args.source}",
        f"ingest.keep_labels={args.initial / TRAIN_IMAGES[args.source]}",
        "augment.enabled=false",
        "pseudo.enabled=false",
        "oof.tta=false",  # the pool is 59k images: its predictions dominate a round with TTA
        "evaluate.robustness.max_samples=100",
        *args.set,
    ]
    results = {
        "initial": args.initial,
        "batch": args.batch,
        "set": common,
        "diversity": args.diversity,
        "balance": args.balance,
        "score": args.score,
        "runs": [],
    }
    # a SIGTERM (kill) exits through the `finally` below, which stops the Label Studio server
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench: terminated"))
    if not serve.executable(ROOT / ".venv-ls").exists():
        sys.exit("bench: .venv-ls/bin/label-studio is missing: run `make labelstudio`")
    with tempfile.TemporaryDirectory(prefix="bench-active-") as tmp:
        base = Path(tmp)
        docroot = base / "docroot"
        docroot.mkdir()
        token, port = secrets.token_hex(20), serve.free_port()
        proc = serve.start(port, base / "ls", docroot, token, secrets.token_hex(8), venv=ROOT / ".venv-ls")
        try:
            serve.wait_ready(port, proc)
            url = f"http://{serve.HOST}:{port}"
            env = {**os.environ, "PIPELINE_QUIET": "1", "LABEL_STUDIO_URL": url, "LABEL_STUDIO_API_KEY": token}
            client = Client(url, token)
            user = client.create_user("annotator@example.com")["id"]
            shared = docroot / "shared"
            for seed in args.seeds:
                for strategy in args.strategies:
                    work = docroot / f"{strategy.replace('+', '-then-')}-{seed}"  # '+' in a URL query is a space
                    for name in ("pipeline", "augment_policies", "labels"):
                        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
                    params = with_sets(shipped, [*common, f"base.seed={seed}"])
                    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
                    if not (shared / f"seed{seed}").exists():  # ingest + split, once per seed
                        for name in ("ingest", "split"):
                            stage(name, work, env)
                        shutil.copytree(work / "data", shared / f"seed{seed}")
                    else:
                        shutil.copytree(shared / f"seed{seed}", work / "data")
                    curve, t0 = [], time.perf_counter()
                    for r in range(args.rounds + 1):
                        if r:
                            project = f"{work.name}-round{r}"
                            how = strategy.split("+")[min(r, strategy.count("+") + 1) - 1]
                            push = ["label", "push", "--quiet", "--project", project, "--select", how]
                            push += ["--split", "unlabeled", "--limit", str(args.batch), "--seed", str(seed + r)]
                            push += ["--diversity", args.diversity] if how == "active" else []
                            push += ["--balance"] if how == "active" and args.balance else []
                            push += ["--score", args.score] if how == "active" else []
                            run(push, work, env)
                            clean, _ = dataset.read_manifest(work / "data/clean")
                            annotate(client, project, clean.set_index("sample_id")["hidden_label"], user)
                            run(["label", "pull", "--quiet", "--project", project], work, env)
                        for name in ROUND:
                            stage(name, work, env)
                        evaluate = json.loads((work / "metrics/evaluate.json").read_text())
                        clean_m = json.loads((work / "metrics/clean.json").read_text())
                        labeled = args.initial + clean_m["patches"]["pool_to_train"]
                        curve.append((labeled, evaluate["accuracy"]))
                        print(
                            f"seed {seed} {strategy}: round {r}, {labeled} labels, test accuracy "
                            f"{evaluate['accuracy']} ({time.perf_counter() - t0:.0f} s so far)",
                            flush=True,
                        )
                    name = strategy
                    if strategy == "active":  # the flags that change what it picks
                        name += " --balance" * args.balance + f" --score {args.score}" * (args.score != "activelab")
                    results["runs"].append({"seed": seed, "strategy": name, "curve": curve})
                    if args.json:
                        args.json.write_text(json.dumps(results, indent=1) + "\n")
        finally:
            serve.stop(proc)
    results["summary"] = summarize(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


def summarize(results: dict) -> dict:
    """Each strategy against random, per seed and on the mean curves of the seeds both ran."""
    curves = {(r["seed"], r["strategy"]): r["curve"] for r in results["runs"]}
    seeds = sorted({seed for seed, _ in curves})
    out: dict = {}
    for strategy in dict.fromkeys(s for _, s in curves if s != "random"):
        both = [seed for seed in seeds if (seed, strategy) in curves and (seed, "random") in curves]
        for seed in both:
            print(f"seed {seed}, {strategy} against random:")
            out.setdefault(str(seed), {})[strategy] = summary(curves[seed, strategy], curves[seed, "random"])
        if len(both) > 1:
            print(f"seeds {both} (mean curves), {strategy} against random:")
            mean = [mean_curve([curves[seed, s] for seed in both]) for s in (strategy, "random")]
            out.setdefault("mean", {})[strategy] = summary(*mean)
    return out


def mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """The seeds' mean accuracy at each number of labels (the curves share their label counts)."""
    return [(n[0], sum(a) / len(a)) for n, a in (zip(*points) for points in zip(*curves))]


def summary(curve: list[tuple[int, float]], random: list[tuple[int, float]]) -> dict:
    """Both ways of reading two curves, printed: the labels random needs to reach the strategy's
    final accuracy (random's curve may run on past the strategy's last round), and (the issue's
    target) the share of random's labels the strategy needs to reach random's accuracy at the
    strategy's last round."""
    (used, final), random_final = curve[-1], dict(random)[curve[-1][0]]
    need, reach = labels_to_match(random, final), labels_to_match(curve, random_final)
    needs = f"{need:.0f}" if need is not None else f"more than {random[-1][0]}"
    reaches = f"{reach:.0f} ({reach / used:.0%} of them)" if reach is not None else "never does"
    print(f"  reaches {final:.4f} with {used} labels; random needs {needs}")
    print(f"  reaches random's {random_final:.4f} at {used} labels with {reaches}")
    share = reach / used if reach is not None else None
    return {
        "final": final,
        "random_labels_to_match": need,
        "share_of_random_to_match": used / need if need is not None else None,  # None: more than random ran
        "labels_to_random_final": reach,
        "share": share,
    }


if __name__ == "__main__":
    main()
