"""The package's shape (issue 11): small modules, no import cycles, the library never imports the CLI.

Imports are read from the source with ``ast`` (function-level imports included), so
the check needs no import of the package and sees every edge a reader would.
"""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"
PACKAGE = SRC / "drmm"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """drmm modules imported by ``path`` (``from .x import y`` resolves to ``pkg.x.y`` when that is a module)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                root = ".".join(base + ([node.module] if node.module else []))
            else:
                root = node.module or ""
            targets = [f"{root}.{a.name}" if f"{root}.{a.name}" in modules else root for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def _graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(f) for f in files}
    return {_module_name(f): _imports(f, modules) for f in files}


def test_every_module_is_at_most_400_lines():
    long = {str(f.relative_to(SRC)): n for f in PACKAGE.rglob("*.py") if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])


def test_the_library_never_imports_the_cli():
    offenders = {m: sorted(i for i in deps if i == "drmm.cli" or i.startswith("drmm.cli."))
                 for m, deps in _graph().items() if not (m == "drmm.cli" or m.startswith("drmm.cli.") or m == "drmm.__main__")}
    assert not {m: d for m, d in offenders.items() if d}


def test_the_checker_sees_cycles_and_relative_imports(tmp_path):
    """The graph builder resolves relative imports (so a cycle through them would be caught)."""
    graph = _graph()
    assert "drmm.models.heads" in graph["drmm.models.sparse_rcnn"] or "drmm.models.layers" in graph["drmm.models.sparse_rcnn"]
    assert "drmm.models.box_ops" in graph["drmm.models.postprocess"]
