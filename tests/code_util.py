"""The package's modules and the pipeline modules each imports, read from the source (ast)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
