"""The layers of docs/architecture.md, enforced: no stage imports another stage, kernels import no
stage and no integration, the data contract imports only itself (and, lazily, the plug-in
registries that params validates against). Every module of the package has a layer."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = {"errors", "console", "registry", "params", "wiring", "schema", "dataset", "artifacts", "patches"}
KERNELS = {
    "decode", "sources", "executor", "neardup", "leakcheck", "issues", "gallery", "models", "fit", "fixmatch",
    "attacks", "robustness",
    "augment.ops", "augment.policy", "augment.mixing", "synthesize.generators", "synthesize.gate",
}  # fmt: skip
STAGES = {
    "ingest", "split", "oof", "clean", "pseudo", "mine", "assemble", "train", "evaluate", "lr_find", "adversarial",
    "augment.stage", "augment.search", "synthesize.stage", "summary", "report", "ablate", "dvcplots",
}  # fmt: skip
INTEGRATIONS = {"labelstudio"}  # the package and everything in it
ENTRY = {"__main__", "", "augment", "synthesize"}  # the dispatcher and package markers
REGISTRIES = {"issues", "leakcheck"}  # params asks them which plug-in names and knobs exist


def layer(module: str) -> str:
    if module in CONTRACT:
        return "contract"
    if module in KERNELS:
        return "kernel"
    if module in STAGES:
        return "stage"
    if module.split(".")[0] in INTEGRATIONS:
        return "integration"
    if module in ENTRY:
        return "entry"
    raise AssertionError(f"pipeline.{module} has no layer: add it to docs/architecture.md and this test")


def modules() -> dict[str, Path]:
    out = {}
    for f in sorted((ROOT / "pipeline").rglob("*.py")):
        parts = f.relative_to(ROOT / "pipeline").with_suffix("").parts
        out[".".join(p for p in parts if p != "__init__")] = f
    return out


def imports(path: Path) -> set[str]:
    """pipeline modules `path` imports, at the top or inside functions (lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
            base = node.module.removeprefix("pipeline").lstrip(".")
            for alias in node.names:
                sub = f"{base}.{alias.name}".lstrip(".")
                found.add(sub if sub in modules() else base)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("pipeline.") for a in node.names if a.name.startswith("pipeline.")}
    return found


def violations() -> list[str]:
    out = []
    for module, path in modules().items():
        mine = layer(module)
        for other in sorted(imports(path) - {module}):
            theirs = layer(other)
            allowed = {
                "contract": {"contract"} | ({"kernel"} if module == "params" and other in REGISTRIES else set()),
                "kernel": {"contract", "kernel"},
                "stage": {"contract", "kernel"},
                "integration": {"contract", "kernel", "integration"},
                "entry": {"contract", "kernel", "stage", "integration", "entry"},
            }[mine]
            if theirs not in allowed:
                out.append(f"{mine} pipeline.{module} imports {theirs} pipeline.{other}")
    return out


def test_every_module_has_a_layer_and_the_arrows_point_down():
    assert violations() == []


def test_a_planted_stage_to_stage_import_is_caught(monkeypatch):
    real = imports
    monkeypatch.setitem(globals(), "imports", lambda p: real(p) | ({"oof"} if p.stem == "mine" else set()))
    assert violations() == ["stage pipeline.mine imports stage pipeline.oof"]


@pytest.mark.parametrize("name", sorted(CONTRACT | KERNELS | STAGES))
def test_every_listed_module_exists(name):
    assert name in modules()
