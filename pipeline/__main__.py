"""`python -m pipeline <stage>`: dispatch to a stage module, imported only when run."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

from pipeline.core import catalog
from pipeline.core.errors import PipelineError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline", description="Data-centric pipeline stages. Each reads its section of params.yaml."
    )
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for name, (_, help_) in catalog.ENTRIES.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def params_epilog(keys: tuple[str, ...], params_file: str) -> str:
    """`--help`'s list of the params a stage reads (its STAGE declaration's), with their current values."""
    from pipeline.core import params

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
    module_name, help_ = catalog.ENTRIES[name]
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
    # a stage's flags come from its STAGE declaration; a module may add more (evaluate's --ledger)
    add_arguments = getattr(module, "add_arguments", None) or module.STAGE.add_arguments
    add_arguments(p)
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
    if not argv or argv[0] not in catalog.ENTRIES:
        build_parser().parse_args(argv)  # prints help or "invalid choice", exits
    name, rest = argv[0], argv[1:]
    parser, module = stage_parser(name, _params_arg(rest))
    args = parser.parse_args(rest)
    from pipeline.core import console, params

    console.setup(args.quiet)
    start = time.perf_counter()
    try:
        loaded = params.load(args.params)
        stage = getattr(module, "STAGE", None)  # a dvc.yaml stage reads only what it declares
        module.main(stage.view(loaded) if stage else loaded, args)
    except PipelineError as e:
        print(f"pipeline {name}: error: {e}", file=sys.stderr)
        return e.exit_code
    if name in catalog.STAGES:
        console.record_time(name, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
