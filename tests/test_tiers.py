"""`make test` (the fast tier, `-m "not slow"`) leaves out every test that runs `dvc repro`, starts a
server or a worker cluster, or renders in Chromium: such a test must be marked slow, so the fast tier
stays fast and `make test-all` (CI) still runs it."""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# a call or a fixture that makes a test heavy
HEAVY_CALLS = {"make_project", "ray_session", "render_in_chromium"}
HEAVY_FIXTURES = {"ls", "ls_server"}  # the Label Studio server


def _marked_slow(node) -> bool:
    return any("slow" in ast.unparse(d) for d in getattr(node, "decorator_list", []))


def unmarked_heavy_tests(source: str) -> list[str]:
    tree = ast.parse(source)
    module_slow = any(
        isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "pytestmark" and "slow" in ast.unparse(n.value)
        for n in tree.body
    )
    e2e = any(isinstance(n, ast.ImportFrom) and n.module == "e2e_util" for n in tree.body)
    if e2e and not module_slow:  # a module of e2e tests: its fixtures make projects and run dvc
        return ["(module: pytestmark = pytest.mark.slow)"]
    found = []
    for node in tree.body:
        if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")) or module_slow:
            continue
        calls = {ast.unparse(c.func).split(".")[-1] for c in ast.walk(node) if isinstance(c, ast.Call)}
        fixtures = {a.arg for a in node.args.args}
        if (calls & HEAVY_CALLS or fixtures & HEAVY_FIXTURES) and not _marked_slow(node):
            found.append(node.name)
    return found


def test_every_heavy_test_is_marked_slow():
    found = {f.name: unmarked_heavy_tests(f.read_text()) for f in sorted(TESTS.glob("test_*.py"))}
    assert {f: names for f, names in found.items() if names} == {}


def test_an_unmarked_heavy_test_is_caught():
    source = "def test_a(ls):\n    pass\n\n@pytest.mark.slow\ndef test_b():\n    ray_session(2)\n"
    assert unmarked_heavy_tests(source) == ["test_a"]
    assert unmarked_heavy_tests("import pytest\npytestmark = pytest.mark.slow\n" + source) == []
    assert unmarked_heavy_tests("from e2e_util import make_project\n") == ["(module: pytestmark = pytest.mark.slow)"]
