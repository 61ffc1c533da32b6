"""dvc.yaml checked against the stages' declarations (`STAGE = wiring.Stage(...)` in each stage
module): the cmd's flags, deps (paths read + the files of the modules the stage imports), outs,
metrics and params. The check is shown failing on planted mistakes, one of each kind."""

import ast
import copy
import importlib
import re
import shlex
from pathlib import Path

import pytest
import yaml
from code_util import ROOT, imports, modules

from pipeline.__main__ import stage_parser
from pipeline.core import catalog, params, wiring
from pipeline.core.errors import PipelineError

# Modules no stage lists as a dep: they compute nothing a stage writes (errors, logging, name
# lookup, wiring). Every value params.py hands a stage is in params.yaml (tests/test_params.py),
# which DVC tracks key by key.
PLUMBING = {"core.errors", "core.console", "core.registry", "core.params", "core.wiring"}
# package __init__ files: docstrings only (checked below)
MARKERS = {m for m, f in modules().items() if f.name == "__init__.py"}


def closure(module: str) -> set[str]:
    """`module` and every pipeline module it imports, transitively (lazy imports count). params'
    own imports of the plug-in registries only validate names, so they are not followed."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += [] if m == "core.params" else sorted(imports(modules()[m]))
    return seen


def code_deps(module: str) -> set[str]:
    files = modules()
    return {files[m].relative_to(ROOT).as_posix() for m in closure(module) - PLUMBING - MARKERS}


def render(text: str, values: dict) -> str:
    """dvc.yaml's `${a.b}` templating, from params.yaml."""

    def lookup(m: re.Match) -> str:
        value = values
        for part in m.group(1).split("."):
            value = value[part]
        return str(value)

    return re.sub(r"\$\{\s*([\w.]+)\s*\}", lookup, text)


def entries(items) -> dict[str, dict]:
    """dvc.yaml's `outs`/`metrics` list as {path: options}."""
    out = {}
    for item in items or []:
        out.update({item: {}} if isinstance(item, str) else item)
    return out


def problems(dvc: dict, values: dict) -> list[str]:
    found = []
    declared = {name for name, e in catalog.ENTRIES.items() if hasattr(importlib.import_module(e.module), "STAGE")}
    for name in sorted(declared - set(dvc["stages"])):
        found.append(f"{name}: declared (STAGE) but not in dvc.yaml")
    for name, entry in dvc["stages"].items():
        if name not in declared:
            found.append(f"{name}: no STAGE declaration in its module")
            continue
        stage: wiring.Stage = importlib.import_module(catalog.ENTRIES[name].module).STAGE
        argv = shlex.split(render(entry["cmd"], values))
        if argv[:4] != ["python", "-m", "pipeline", name]:
            found.append(f"{name}: cmd must start `python -m pipeline {name}`, got {' '.join(argv[:4])}")
            continue
        parser = stage_parser(name)[0]
        parser.exit_on_error = False
        try:
            args, unknown = parser.parse_known_args(argv[4:])
        except (Exception, SystemExit) as e:  # argparse exits on a missing required flag
            found.append(f"{name}: cmd does not parse against its flags: {e}")
            continue
        if unknown:
            found.append(f"{name}: cmd has flags the stage does not declare: {' '.join(unknown)}")

        def paths(flags) -> list[str]:
            vals = [getattr(args, f.dest) for f in flags]
            return [p for v in vals for p in (v if isinstance(v, list) else [v])]

        deps = [render(d, values) for d in entry.get("deps", [])]
        want = set(paths(stage.reads)) | code_deps(catalog.ENTRIES[name].module.removeprefix("pipeline."))
        for miss in sorted(want - set(deps)):
            found.append(f"{name}: deps lack {miss}")
        for extra in sorted(set(deps) - want):
            found.append(f"{name}: deps list {extra}, which the stage neither reads nor imports")
        outs = entries(entry.get("outs"))
        want_outs = {p: {} for p in paths(stage.writes)}
        if stage.plots:
            # cached: DVC saves no run-cache entry for a stage with an uncached out that is not a
            # metric or plot (dvc.stage.Stage.run), and then every experiment re-runs the stage
            want_outs[args.plots] = {}
        if outs != want_outs:
            found.append(f"{name}: outs {outs}, expected {want_outs}")
        metrics = entries(entry.get("metrics"))
        want_metrics = {args.metrics: {"cache": False}} if stage.metrics else {}
        if metrics != want_metrics:
            found.append(f"{name}: metrics {metrics}, expected {want_metrics}")
        listed = entry.get("params", [])
        if sorted(listed) != sorted(stage.params):
            found.append(f"{name}: params {listed}, its STAGE declares {list(stage.params)}")
    return found


def _project() -> tuple[dict, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text()), yaml.safe_load((ROOT / "params.yaml").read_text())


def test_dvc_yaml_agrees_with_the_stage_declarations():
    assert problems(*_project()) == []


def test_dvc_yaml_holds_the_catalog_stages_in_its_order():
    assert tuple(_project()[0]["stages"]) == catalog.STAGES


@pytest.mark.parametrize(
    "plant, expected",
    [
        (
            lambda d: d["stages"]["oof"]["deps"].remove("pipeline/learn/fit.py"),
            ["oof: deps lack pipeline/learn/fit.py"],
        ),
        (
            lambda d: d["stages"]["mine"]["deps"].append("pipeline/dedup/neardup.py"),
            ["mine: deps list pipeline/dedup/neardup.py, which the stage neither reads nor imports"],
        ),
        (
            lambda d: d["stages"]["oof"]["params"].remove("train.lr"),
            [
                "oof: params ['base', 'backbone', 'oof', 'clean.inject_noise', 'train.model', 'train.width', "
                "'train.batch_size', 'train.optimizer', 'train.momentum'"
            ],
        ),
        (
            lambda d: d["stages"]["clean"].update(cmd=d["stages"]["clean"]["cmd"].replace("--labels", "--label")),
            ["clean: cmd does not parse"],
        ),
        (
            lambda d: d["stages"]["augment"].update(cmd=d["stages"]["augment"]["cmd"] + " --weights w.parquet"),
            ["augment: cmd has flags the stage does not declare: --weights w.parquet"],
        ),
        (lambda d: d["stages"]["train"]["outs"].pop(0), ["train: outs"]),
        (lambda d: d["stages"]["mine"]["outs"].__setitem__(1, {"plots/mine": {"cache": False}}), ["mine: outs"]),
        (lambda d: d["stages"].pop("mine"), ["mine: declared (STAGE) but not in dvc.yaml"]),
    ],
    ids=["missing-dep", "stray-dep", "param", "flag-typo", "undeclared-flag", "outs", "uncached-plots", "stage"],
)
def test_the_check_fails_on_a_planted_mistake(plant, expected):
    dvc, values = _project()
    planted = copy.deepcopy(dvc)
    plant(planted)  # in place
    found = problems(planted, values)
    assert len(found) == len(expected), found
    for got, want in zip(found, expected):
        assert got.startswith(want), (got, want)


def test_the_learned_policy_param_names_what_policy_search_writes():
    dvc, values = _project()
    assert f"--out {params.LEARNED_POLICY}" in " ".join(dvc["stages"]["policy-search"]["cmd"].split())


def test_package_markers_hold_no_code():
    for m in MARKERS:
        body = ast.parse(modules()[m].read_text()).body
        assert all(
            isinstance(n, ast.Expr) or (isinstance(n, ast.Assign) and n.targets[0].id == "__version__") for n in body
        ), m


def test_a_stage_reading_an_undeclared_param_fails_naming_it():
    p = params.parse({})
    view = wiring.Stage("mine", reads=(), writes=(), params=("mine", "train.threads")).view(p)
    assert view.mine.top == p.mine.top and view.train.threads == p.train.threads
    with pytest.raises(PipelineError, match="stage mine reads params train.lr, which its STAGE declaration"):
        view.train.lr
    with pytest.raises(PipelineError, match="reads params base"):
        view.base


def test_path_flags_are_required_with_no_default(capsys):
    parser = stage_parser("oof")[0]
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert (
        "the following arguments are required: --split, --embed, --labels, --out, --metrics" in capsys.readouterr().err
    )
    assert all(Path(a.default or "x") == Path("x") for a in parser._actions if a.dest in {"split", "out", "metrics"})
