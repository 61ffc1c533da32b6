"""`python -m pipeline <stage>`: dispatch to a stage module, imported only when run."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from pipeline.errors import PipelineError

# stage name -> (module, one-line description); modules are imported lazily so that
# `python -m pipeline split` never pays for torch.
STAGES = {
    "ingest": ("pipeline.ingest", "decode and validate a source into a manifest + image stores; quarantine bad input"),
    "split": (
        "pipeline.split",
        "stratified, group-aware, leak-safe train/val/test split: duplicate clusters never cross splits",
    ),
    "oof": ("pipeline.oof", "out-of-fold probabilities, embeddings and training dynamics by group-aware K-fold"),
    "clean": (
        "pipeline.clean",
        "cleanlab label issues, outliers, near-duplicates, imbalance; flag / remove / relabel train",
    ),
    "pseudo": (
        "pipeline.pseudo",
        "pseudo-labels for the unlabeled pool from the oof ensemble, then self-training rounds (Noisy Student)",
    ),
    "mine": ("pipeline.mine", "hardness, data-map categories and sampling weights; suspects are not hard"),
    "policy-search": (
        "pipeline.augment.search",
        "learn an AutoAugment policy from the data: density matching with the oof fold models (Fast AutoAugment)",
    ),
    "augment": (
        "pipeline.augment.stage",
        "offline augmented copies of the train samples under a policy file "
        "(AutoAugment, RandAugment, TrivialAugment, albumentations)",
    ),
    "adversarial": ("pipeline.adversarial", "FGSM / PGD examples of train samples as a derived dataset with lineage"),
    "synthesize": (
        "pipeline.synthesize.stage",
        "class-conditional VAE / GAN samples, admitted through a quality gate "
        "(FID, KID, precision/recall, memorisation, label consistency, TSTR)",
    ),
    "assemble": ("pipeline.assemble", "build the training-set manifest (real + derived samples) with lineage checks"),
    "train": ("pipeline.train", "train the model on the assembled set, early-stopping on val"),
    "evaluate": ("pipeline.evaluate", "score the model on the test split: accuracy, per-class, confusion, calibration"),
    "report": (
        "pipeline.report",
        "one offline HTML page of the run, stage by stage (report/index.html), and metrics/data_health.json",
    ),
    "ablate": (
        "pipeline.ablate",
        "queue a DVC experiment per recipe row and train seed (all, none, all but one stage); --collect the table",
    ),
    "plots-offline": ("pipeline.dvcplots", "write a `dvc plots show --html-template` page with Vega inlined (offline)"),
    "lr-find": ("pipeline.lr_find", "LR range test: sweep the learning rate and suggest a maximum"),
    "params": ("pipeline.params", "print the effective params (every knob, as params.yaml holds them) as YAML"),
    "summary": (
        "pipeline.summary",
        "the run in ten lines: test accuracy with its interval, data counts, flags, where things are",
    ),
    "label": ("pipeline.labelstudio.cli", "push samples to / pull annotations from Label Studio; serve a local one"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline", description="Data-centric pipeline stages. Each reads its section of params.yaml."
    )
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for name, (_, help_) in STAGES.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def params_epilog(keys: tuple[str, ...], params_file: str) -> str:
    """`--help`'s list of the params a stage reads (its STAGE declaration's), with their current values."""
    from pipeline import params

    if not keys:
        return ""
    try:
        current = params.load(params_file).model_dump(mode="json")
    except PipelineError as e:
        return f"params: cannot read {params_file}: {e}"
    lines = []

    def walk(prefix: str, value) -> None:
        if (
            isinstance(value, dict)
            and value
            and all(isinstance(k, str) for k in value)
            and not prefix.endswith(("fractions", "checks", "issues"))
        ):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        else:
            lines.append(f"  {prefix} = {value if isinstance(value, str) else json.dumps(value)}")

    for key in keys:
        value = current
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        walk(key, value)
    return (
        f"params it reads (current values from {params_file}; change one with "
        "`dvc exp run -S key=value`):\n" + "\n".join(lines)
    )


def stage_parser(name: str, params_file: str = "params.yaml") -> tuple[argparse.ArgumentParser, object]:
    module_name, help_ = STAGES[name]
    module = importlib.import_module(module_name)
    p = argparse.ArgumentParser(
        prog=f"python -m pipeline {name}",
        description=help_,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # dvc.yaml spells flags out; a prefix of one is a mistake, not a match
        epilog=params_epilog(getattr(getattr(module, "STAGE", None), "params", ()), params_file),
    )
    p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info logs")
    module.add_arguments(p)
    return p, module


def _params_arg(argv: list[str]) -> str:
    for i, a in enumerate(argv):
        if a == "--params" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--params="):
            return a.split("=", 1)[1]
    return "params.yaml"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in STAGES:
        build_parser().parse_args(argv)  # prints help or "invalid choice", exits
    name, rest = argv[0], argv[1:]
    parser, module = stage_parser(name, _params_arg(rest))
    args = parser.parse_args(rest)
    from pipeline import console, params

    console.setup(args.quiet)
    try:
        loaded = params.load(args.params)
        stage = getattr(module, "STAGE", None)  # a dvc.yaml stage reads only what it declares
        module.main(stage.view(loaded) if stage else loaded, args)
    except PipelineError as e:
        print(f"pipeline {name}: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
