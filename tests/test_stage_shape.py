"""One stage shape (docs/architecture.md): `run(params, inputs...) -> Result` is pure, `main` does the I/O.

Every dvc.yaml stage module has a `Result` (a NamedTuple: named, typed fields that still unpack
like a tuple), a `run` whose first argument is `params` and whose return annotation is `Result`,
and no file write inside `run`. The one output two stages take is the image store their pixels
stream into (a `dataset.ShardWriter` main opens): a dataset of decoded images need not fit in memory.
"""

import ast
import importlib
import inspect
import textwrap

import pytest

from pipeline.core import catalog

WRITES = {
    "write_manifest",
    "write_csv",
    "write_json",
    "save",
    "save_model",
    "store_pixels",
    "to_parquet",
    "to_csv",
    "write_text",
    "write_bytes",
    "staged_dir",
    "mkdir",
}
STREAMING = {"ingest", "augment"}  # their pixels stream into a `store: dataset.ShardWriter`


def writes_in(function) -> list[str]:
    """The file-writing calls in a function's own body (by the callee's name)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    names = [
        node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
    ]
    return sorted(set(names) & WRITES)


def shape_problems(name: str, module) -> list[str]:
    out = []
    result = getattr(module, "Result", None)
    if not (isinstance(result, type) and issubclass(result, tuple) and hasattr(result, "_fields")):
        out.append(f"{name}: no Result NamedTuple")
    run, main = getattr(module, "run", None), getattr(module, "main", None)
    if run is None or main is None:
        return out + [f"{name}: needs run and main"]
    sig = inspect.signature(run)
    if next(iter(sig.parameters), None) != "params":
        out.append(f"{name}: run's first argument is not params")
    if sig.return_annotation not in ("Result", result):
        out.append(f"{name}: run is not annotated -> Result")
    for p in sig.parameters.values():
        if "ShardWriter" in str(p.annotation) and name not in STREAMING:
            out.append(f"{name}: run takes an output argument ({p.name})")
    out += [f"{name}: run writes files ({call})" for call in writes_in(run)]
    if list(inspect.signature(main).parameters) != ["params", "args"]:
        out.append(f"{name}: main is not main(params, args)")
    return out


@pytest.mark.parametrize("stage", catalog.STAGES)
def test_every_stage_has_the_one_shape(stage):
    assert shape_problems(stage, importlib.import_module(catalog.DAG[stage].module)) == []


def test_the_check_catches_a_run_that_writes_and_a_bare_tuple():
    import types

    def run(params, df):
        df.to_parquet("x.parquet")
        return df, {}

    def main(params, args):
        pass

    planted = types.SimpleNamespace(run=run, main=main)
    assert shape_problems("planted", planted) == [
        "planted: no Result NamedTuple",
        "planted: run is not annotated -> Result",
        "planted: run writes files (to_parquet)",
    ]
