"""Names with a home: a manifest column is spelt through `core.schema`'s constants everywhere
outside core, so a renamed or mistyped column is one edit and a NameError, not a silent KeyError.

The check reads every module's syntax tree for a column name written as a string where a frame is
indexed: `df["split"]`, `df.loc[rows, "label"]`, `df[["sample_id", "label"]]`, `"weight" in df`,
`df.set_index("sample_id")`, `groupby`, `sort_values`, `drop_duplicates`. Keyword arguments
(`merge(on=...)`, `assign(split=...)`) and dict keys of other formats are not columns it can tell apart.
"""

import ast

import pytest
from code_util import modules

from pipeline.core import schema

COLUMNS = {v for k, v in vars(schema).items() if k.isupper() and isinstance(v, str) and k not in ("REAL", "POOL")}
COLUMNS -= set(schema.DERIVED_ORIGINS)
CALLS = {"set_index", "groupby", "sort_values", "drop_duplicates"}
# the same words where they are no manifest column: (module, the indexed expression)
NOT_COLUMNS = {
    ("commands.ablate", "r"): "an ablation row's name",
    ("stages.report", "r"): "an ablation row's name",
    ("labelstudio.push", "s"): "a Label Studio storage's folder",
    ("commands.summary", "m"): "a stage's metrics, by stage name",
}


def literal_columns(module: str, path) -> list[str]:
    src = path.read_text()
    out = []

    def check(node, where):
        items = node.elts if isinstance(node, (ast.List, ast.Tuple)) else [node]
        for c in items:
            if isinstance(c, ast.Constant) and c.value in COLUMNS and (module, where) not in NOT_COLUMNS:
                out.append(f"pipeline/{module.replace('.', '/')}.py:{c.lineno}: {c.value!r}")

    for n in ast.walk(ast.parse(src)):
        if isinstance(n, ast.Subscript) and not (isinstance(n.value, ast.Name) and n.value.id == "Literal"):
            value = ast.get_source_segment(src, n.value)
            if not value.startswith("params"):
                check(n.slice, value)
        elif isinstance(n, ast.Compare) and isinstance(n.ops[0], (ast.In, ast.NotIn)):
            right = n.comparators[0]
            if isinstance(right, ast.Attribute) and right.attr == "columns" or isinstance(right, ast.Name):
                check(n.left, ast.get_source_segment(src, right))
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in CALLS and n.args:
            check(n.args[0], n.func.attr)
    return out


def violations() -> list[str]:
    return [v for m, p in sorted(modules().items()) if not m.startswith("core.") for v in literal_columns(m, p)]


def test_columns_are_spelt_through_schema_outside_core():
    assert violations() == []


def test_the_check_catches_a_planted_literal(tmp_path, monkeypatch):
    import code_util

    planted = tmp_path / "planted.py"
    planted.write_text('def f(df):\n    return df[df["split"] == "train"].set_index("sample_id")\n')
    monkeypatch.setattr(code_util, "modules", lambda: {"stages.planted": planted})
    monkeypatch.setitem(globals(), "modules", code_util.modules)
    assert sorted(violations()) == [
        "pipeline/stages/planted.py:2: 'sample_id'",
        "pipeline/stages/planted.py:2: 'split'",
    ]


@pytest.mark.parametrize("name", sorted(COLUMNS))
def test_every_column_constant_is_used_outside_core(name):
    """A constant nobody outside core reads is a name without a user: drop it or use it."""
    users = [m for m, p in modules().items() if not m.startswith("core.") and "schema." in p.read_text()]
    attr = next(k for k, v in vars(schema).items() if v == name and k.isupper())
    assert any(f"schema.{attr}" in modules()[m].read_text() for m in users), attr
