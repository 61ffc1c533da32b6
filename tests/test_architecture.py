"""The layers of docs/architecture.md, enforced as a rule on folders: a module's layer is its folder.
No stage imports another stage; kernels import no stage, command or integration; the core imports only
itself (and, lazily, the plug-in registries that params validates against). Every module has a layer."""

import pytest
from code_util import ROOT, imports, modules

LAYERS = {
    "core": "core",
    "stages": "stage",
    "commands": "command",
    "labelstudio": "integration",
    **dict.fromkeys(("sources", "dedup", "quality", "learn", "augment", "synthesize", "render"), "kernel"),
}
ALLOWED = {
    "core": {"core"},
    "kernel": {"core", "kernel"},
    "stage": {"core", "kernel"},
    "command": {"core", "kernel"},
    "integration": {"core", "kernel", "integration"},
    "entry": {"core", "kernel", "stage", "command", "integration", "entry"},
}
REGISTRIES = {"quality.issues", "dedup.leakcheck"}  # params asks them which plug-in names and knobs exist


def layer(module: str) -> str:
    if module in ("", "__main__") or module in LAYERS:  # the dispatcher and the package markers
        return "entry"
    folder = module.split(".")[0]
    if folder not in LAYERS:
        raise AssertionError(f"pipeline.{module} has no layer: put it in a layer's folder (docs/architecture.md)")
    return LAYERS[folder]


def module_violations(module: str) -> list[str]:
    out, mine = [], layer(module)
    for other in sorted(imports(modules()[module]) - {module}):
        theirs = layer(other)
        ok = theirs in ALLOWED[mine] or (module == "core.params" and other in REGISTRIES)
        if mine == "stage" and theirs == "stage" and other != "stages":
            ok = False  # a stage never imports another stage
        if not ok:
            out.append(f"{mine} pipeline.{module} imports {theirs} pipeline.{other}")
    return out


def violations() -> list[str]:
    return [v for module in modules() for v in module_violations(module)]


@pytest.mark.parametrize("module", sorted(modules()))
def test_every_module_has_a_layer_and_its_arrows_point_down(module):
    assert module_violations(module) == []


def test_a_planted_stage_to_stage_import_is_caught(monkeypatch):
    real = imports
    monkeypatch.setitem(globals(), "imports", lambda p: real(p) | ({"stages.oof"} if p.stem == "mine" else set()))
    assert violations() == ["stage pipeline.stages.mine imports stage pipeline.stages.oof"]


def test_a_planted_upward_import_and_a_module_outside_the_layers_are_caught(monkeypatch):
    real = imports
    monkeypatch.setitem(globals(), "imports", lambda p: real(p) | ({"stages.train"} if p.stem == "fit" else set()))
    assert violations() == ["kernel pipeline.learn.fit imports stage pipeline.stages.train"]
    with pytest.raises(AssertionError, match="pipeline.helpers has no layer"):
        layer("helpers")


def test_every_folder_is_a_layer():
    folders = {p.name for p in (ROOT / "pipeline").iterdir() if (p / "__init__.py").exists()}
    assert folders == set(LAYERS)
